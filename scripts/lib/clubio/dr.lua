-- Disaster recovery: a logical replica of the primary Neon project in the DR project, and the
-- failover steps as a Lua table that a site file can extend, reorder or replace.
--
-- Used by scripts/dr-setup.lua (replication), scripts/dr-failover.lua (the failover) and
-- scripts/dr-test.lua (the quarterly DR test); docs/dr.md is the one-page guide.
--
--   local dr = require "clubio.dr"
--   local ctx = dr.context()                 -- env: NEON_PROJECT_ID_PRIMARY, NEON_PROJECT_ID_DR, ...
--   dr.setup(ctx, {})                        -- schema, publication, subscription, initial sync
--   local s = dr.status(ctx)                 -- {lag_bytes, lag_seconds, ...}
--   local steps = dr.load_site(dr.steps())   -- the failover steps, after the site file's changes
--   dr.failover(ctx, steps, {from = nil})    -- runs them as job steps (journal, timings)
--
-- A step is {name = "stop-replication", plan = "...", hint = "...", run = function(ctx) ... end};
-- run returns a table (its result, kept in ctx.results[name]) or nil. Steps share `ctx`:
-- ctx.cfg (settings), ctx.primary / ctx.dr (neon clients), ctx.primary_url / ctx.dr_url (secret
-- connection URIs; never print them), ctx.results, ctx.primary_reachable.
--
-- Secrets: connection URIs come from the Neon API and are registered with the redactor; the
-- subscription's connection string (with the primary's password) is stored by PostgreSQL in
-- pg_subscription.subconninfo on the DR side, readable only by superusers (Neon: the project
-- owner); rotate the primary's password with ALTER SUBSCRIPTION ... CONNECTION after a reset.
--
-- The parts, each a file of its own: dr_util.lua (SQL helpers), pgurl.lua (connection URLs, by
-- libpq), dr_config.lua (settings, context, connections), dr_replication.lua (tables, schema,
-- publication, subscription), dr_status.lua (after a branch restore, the failover record, lag,
-- sequences), dr_targets.lua (where the application is pointed), dr_steps.lua (the failover
-- steps), dr_site.lua (site files, running the steps). This file puts them in one table.
local M = {}

M.HEARTBEAT = "public.clubio_dr_heartbeat"
-- pg_subscription is shared by the databases of a cluster: ours are those of this database
M.THIS_DB = "(SELECT oid FROM pg_database WHERE datname = current_database())"

for k, v in pairs(require "clubio.dr_util") do
  if k ~= "getenv" then M[k] = v end
end

-- Connection URLs (clubio.pgurl: parsed by libpq)
local pgurl = require "clubio.pgurl"
M.parse_url, M.libpq_env, M.conninfo, M.display, M.with_database =
  pgurl.parse, pgurl.libpq_env, pgurl.conninfo, pgurl.display, pgurl.with_database

for _, part in ipairs{"dr_config", "dr_replication", "dr_status", "dr_targets", "dr_steps", "dr_site"} do
  require("clubio." .. part)(M)
end

return M
