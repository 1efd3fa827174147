-- dr-failover's steps customised by a site file found through CLUBIO_DR_PATH (reordered,
-- replaced, extended, removed), a failing step that stops the failover with the journal showing
-- where, resuming with --from, --dry-run, and broken site files.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/dr/?.lua;" .. package.path
local T = require "testing"
local F = require "dr_fixture"

local f = F.new("site")
local write = T.write
local function subscribed()
  local d <close> = f:dr()
  return d:query("SELECT count(*) AS n FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())")[1].n == "1"
end

local site_dir = f.dir .. "/site"
require("proc").run{argv = {"mkdir", "-p", site_dir}, check = true}
local marker = f.dir .. "/notified"
write(site_dir .. "/dr-site.lua", string.format([[
-- a site's failover: drain the app first, no Route53 here, our own notification, and the
-- write check before the sequences are synchronised
return function(steps, edit, dr)
  edit.insert_after(steps, "check-dr-health", {name = "drain-app", plan = "scale the app to zero",
    run = function(ctx) return {drained = true} end})
  edit.remove(steps, "update-routing")
  edit.replace(steps, "notify", {name = "page-oncall", plan = "write the marker file",
    run = function(ctx)
      local fh = assert(io.open(%q, "w"))
      fh:write("failed over to ", dr.display(ctx.dr_url), "\n")
      fh:close()
    end})
  edit.move_after(steps, "verify-writes", "stop-replication")
  return steps
end
]], marker))
local ORDER = "check-dr-health drain-app measure-lag fence-primary stop-replication verify-writes sync-sequences update-app-target page-oncall"

T.case("setup for the site-file tests", function()
  local r = f:run{"dr-setup"}
  T.eq(r.status, 0, r.all)
end)

T.case("--steps lists the steps after the site file's changes", function()
  local r = f:run({"dr-failover", "--steps", "--json"}, {CLUBIO_DR_PATH = site_dir})
  T.eq(r.status, 0, r.all)
  local names = {}
  for _, s in ipairs(r.doc.steps) do names[#names + 1] = s.name end
  T.eq(table.concat(names, " "), ORDER)
  T.eq(r.doc.site_files[1], site_dir .. "/dr-site.lua")
end)

T.case("--dry-run prints the plan and changes nothing", function()
  local r = f:run({"dr-failover", "--dry-run"}, {CLUBIO_DR_PATH = site_dir})
  T.eq(r.status, 0, r.all)
  T.match(r.stderr, "would drain%-app: scale the app to zero")
  T.match(r.stderr, "would page%-oncall")
  T.no_match(r.stderr, "update%-routing")
  T.match(r.stdout, "dry run: nothing was changed")
  T.ok(subscribed(), "still replicating")
end)

T.case("without --yes and without a terminal: refused before any step", function()
  local r = f:run({"dr-failover"}, {CLUBIO_DR_PATH = site_dir})
  T.eq(r.status, 5, r.all)
  T.match(r.stderr, "re%-run with %-%-yes")
  T.ok(subscribed(), "still replicating")
end)

-- a second site file on the path adds a step that fails after replication is stopped
local boom = write(f.dir .. "/boom.lua", [[
return {after = {["stop-replication"] = {{name = "swap-secrets", plan = "rotate the app's secrets",
  hint = "rotate them by hand in the vault",
  run = function(ctx) require("clubio").fail{message = "vault sealed", code = "site.vault"} end}}}}
]])

T.case("a failing step stops the failover; the error and the journal say where", function()
  local r = f:run({"dr-failover", "--yes"}, {CLUBIO_DR_PATH = site_dir .. ":" .. boom})
  T.eq(r.status, 1, r.all)
  T.match(r.stderr, "failover stopped at step 6/10 'swap%-secrets': vault sealed")
  T.match(r.stderr, "rotate them by hand in the vault")
  T.match(r.stderr, "done so far: check%-dr%-health, drain%-app, measure%-lag, fence%-primary, stop%-replication")
  T.match(r.stderr, "re%-run with %-%-from swap%-secrets")
  T.eq(table.concat(f:last_run("dr-failover"), " "),
       "check-dr-health:ok drain-app:ok measure-lag:ok fence-primary:ok stop-replication:ok swap-secrets:failed")
  local fh = io.open(marker, "r")
  T.ok(fh == nil, "later steps did not run")
  if fh then fh:close() end
  local failed
  for _, e in ipairs(f:journal_entries("dr-failover")) do if e.status == "failed" then failed = e end end
  T.match(failed.error, "vault sealed")
  local status
  for _, run in ipairs(require("clubio.job").runs{path = f.journal, job = "dr-failover"}) do
    if run.run == failed.run then status = run.status end
  end
  T.eq(status, "failed", "clubio.job.runs sees the run as failed")
end)

T.case("--from resumes after the failed step; the earlier ones are journaled as skipped", function()
  local r = f:run({"dr-failover", "--yes", "--from", "verify-writes"}, {CLUBIO_DR_PATH = site_dir .. ":" .. boom})
  T.eq(r.status, 0, r.all)
  T.eq(table.concat(f:last_run("dr-failover"), " "),
       "check-dr-health:skipped drain-app:skipped measure-lag:skipped fence-primary:skipped stop-replication:skipped " ..
       "swap-secrets:skipped verify-writes:ok sync-sequences:ok update-app-target:ok page-oncall:ok")
  local fh = assert(io.open(marker, "r"))
  T.match(fh:read("a"), "failed over to app@127%.0%.0%.1:%d+/" .. f.db)
  fh:close()
  local d <close> = f:dr()
  local max = tonumber(d:query("SELECT max(id) AS m FROM items")[1].m)
  T.ok(tonumber(d:query("INSERT INTO items (name) VALUES ('x') RETURNING id")[1].id) > max, "sequences synchronised")
end)

T.case("a table-form site file: `order` with the provided steps only", function()
  local tbl = write(f.dir .. "/order.lua", [[
return {remove = {"update-routing", "fence-primary"},
        order = {"check-dr-health", "verify-writes", "measure-lag", "stop-replication", "sync-sequences", "update-app-target", "notify"}}
]])
  local r = f:run({"dr-failover", "--yes"}, {CLUBIO_DR_PATH = tbl})
  T.eq(r.status, 0, r.all)
  T.eq(table.concat(f:last_run("dr-failover"), " "),
       "check-dr-health:ok verify-writes:ok measure-lag:ok stop-replication:ok sync-sequences:ok update-app-target:ok notify:ok")
end)

T.case("broken site files: a clear configuration error naming the file", function()
  local bad = write(f.dir .. "/bad.lua", "return function(steps, edit) edit.remove(steps, 'no-such-step') end\n")
  local r = f:run({"dr-failover", "--steps"}, {CLUBIO_DR_PATH = bad})
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "no failover step named 'no%-such%-step'")
  T.match(r.stderr, "the steps are: check%-dr%-health, measure%-lag")
  local syntax = write(f.dir .. "/syntax.lua", "return {\n")
  r = f:run({"dr-failover", "--steps"}, {CLUBIO_DR_PATH = syntax})
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "cannot load the DR site file .*syntax%.lua")
  local nostep = write(f.dir .. "/nostep.lua", "return {steps = {{name = 'x'}}}\n")
  r = f:run({"dr-failover", "--steps"}, {CLUBIO_DR_PATH = nostep})
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "step 1 is not {name")
  r = f:run({"dr-failover", "--yes", "--from", "nope"}, {})
  T.eq(r.status, 3, r.all)
  T.match(r.stderr, "no failover step named 'nope'")
end)

f:cleanup()
return T.finish()
