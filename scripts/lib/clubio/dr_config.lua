-- clubio.dr, configuration and context: the settings from the environment (docs/dr.md), the
-- Neon connection URIs of the two sides, the context steps share, and connections to each side.
-- A part of clubio.dr: require("clubio.dr") calls this file's function with its table.
return function(M)
  local time, clubio, pgdump, neon = require "time", require "clubio", require "pgdump", require "neon"
  local getenv = require("clubio.dr_util").getenv
  local with_param = require("clubio.pgurl").with_param

  -- Settings from the environment (documented in docs/dr.md). overrides: a table of the same keys.
  function M.config(overrides)
    local c = {
      primary_project = getenv("NEON_PROJECT_ID_PRIMARY") or getenv("NEON_PROJECT_ID"),
      dr_project = getenv("NEON_PROJECT_ID_DR"),
      primary_branch = getenv("DR_PRIMARY_BRANCH"),
      dr_branch = getenv("DR_BRANCH"),
      database = getenv("DR_DATABASE"),
      role = getenv("DR_ROLE"),
      admin_database = getenv("DR_ADMIN_DATABASE", "postgres"),
      publication = getenv("DR_PUBLICATION", "clubio_dr"),
      failback_publication = getenv("DR_FAILBACK_PUBLICATION", "clubio_dr_failback"),
      subscription = getenv("DR_SUBSCRIPTION"),
      tables = getenv("DR_TABLES"),
      primary_url = getenv("DR_PRIMARY_URL"),
      target_url = getenv("DR_TARGET_URL"),
      connect_timeout = tonumber(getenv("DR_CONNECT_TIMEOUT", "10")),
      sync_timeout = tonumber(getenv("DR_SYNC_TIMEOUT", "3600")),
      drain_timeout = tonumber(getenv("DR_DRAIN_TIMEOUT", "120")),
      sequence_gap = tonumber(getenv("DR_SEQUENCE_GAP", "1000")),
      app_target = getenv("DR_APP_TARGET"),
      app_target_var = getenv("DR_APP_TARGET_VAR", "DATABASE_URL"),
      route53_zone = getenv("DR_ROUTE53_ZONE_ID"),
      route53_record = getenv("DR_ROUTE53_RECORD"),
      route53_value = getenv("DR_ROUTE53_VALUE"),
      route53_primary_value = getenv("DR_ROUTE53_PRIMARY_VALUE"),
      route53_type = getenv("DR_ROUTE53_TYPE", "CNAME"),
      route53_ttl = tonumber(getenv("DR_ROUTE53_TTL", "60")),
      webhook_env = "DR_WEBHOOK_URL",
    }
    for k, v in pairs(overrides or {}) do c[k] = v end
    if not c.primary_project and not c.primary_url then
      clubio.fail{message = "NEON_PROJECT_ID_PRIMARY is not set", class = "config", code = "config.env",
                  hint = "export NEON_PROJECT_ID_PRIMARY (the primary Neon project) or DR_PRIMARY_URL"}
    end
    if not c.dr_project and not c.target_url then
      clubio.fail{message = "NEON_PROJECT_ID_DR is not set", class = "config", code = "config.env",
                  hint = "export NEON_PROJECT_ID_DR (the DR Neon project) or DR_TARGET_URL"}
    end
    if type(c.tables) == "string" then
      local list = M.parse_table_list(c.tables)
      c.tables = #list > 0 and list or nil
    end
    return c
  end

  -- The branch's connection URI for cfg.database. A database created with SQL that the API does
  -- not list (neon-local lists only the project's own) is reached with the role's URI for the
  -- branch's database and the name swapped: the role and password are the branch's either way.
  local function neon_uri(client, cfg, branch)
    local ok, u = pcall(client.connection_uri, client, {branch = branch, database = cfg.database, role = cfg.role})
    if ok then return u end
    if not (cfg.database and clubio.is_error(u) and u.code == "neon.not_found") then error(u, 0) end
    local base = client:connection_uri{branch = branch, role = cfg.role}
    return M.with_database(base, cfg.database)
  end

  -- The connection URI of `branch` of a Neon project (by name or id), for cfg.database.
  function M.branch_url(client, cfg, branch) return neon_uri(client, cfg, branch) end

  -- The context steps share. The primary may be unreachable (API or database): then
  -- ctx.primary_url is nil and ctx.primary_error says why; the DR side must answer.
  function M.context(cfg)
    cfg = cfg or M.config()
    local ctx = {cfg = cfg, results = {}, started = time.now()}
    if cfg.dr_project then ctx.dr = neon.client{project_id = cfg.dr_project, timeout = 120} end
    if cfg.primary_project then
      local ok, c = pcall(neon.client, {project_id = cfg.primary_project, timeout = 60})
      if ok then ctx.primary = c end
    end
    ctx.dr_url = cfg.target_url or neon_uri(ctx.dr, cfg, cfg.dr_branch)
    if cfg.primary_url then
      ctx.primary_url = cfg.primary_url
    else
      local ok, u = pcall(neon_uri, ctx.primary, cfg, cfg.primary_branch)
      if ok then ctx.primary_url = u else ctx.primary_error = tostring(u) end
    end
    local db = M.parse_url(ctx.dr_url).database or "db"
    cfg.subscription = cfg.subscription or ("clubio_dr_" .. db:lower():gsub("[^%w_]", "_")):sub(1, 63)
    -- the failback's slot on the DR side (and its subscription on the primary)
    cfg.failback_slot = cfg.failback_slot or ("clubio_drfb_" .. db:lower():gsub("[^%w_]", "_")):sub(1, 63)
    return ctx
  end

  -- A connection to the primary, or nil and the error when it does not answer.
  function M.try_primary(ctx, database)
    if not ctx.primary_url then return nil, ctx.primary_error or "no primary URL" end
    local url = ctx.primary_url
    if database then url = M.with_database(url, database) end
    local ok, c = pcall(pgdump.connect, with_param(url, "connect_timeout", tostring(ctx.cfg.connect_timeout)))
    if not ok then return nil, tostring(c) end
    return c
  end

  -- The DR database is fenced (read-only by default) while it is a replica: clubio-dr's own
  -- sessions write all the same (subscription changes, heartbeats). opts.as_app: a session as the
  -- application gets it (the database's defaults), for checks of what the application can do.
  function M.connect_dr(ctx, opts)
    local c = pgdump.connect(with_param(ctx.dr_url, "connect_timeout", tostring(ctx.cfg.connect_timeout)))
    if not (opts and opts.as_app) then c:query("SET default_transaction_read_only = off") end
    return c
  end
end
