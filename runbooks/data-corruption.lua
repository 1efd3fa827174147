-- Runbook: bad data in a table — find the window, keep a safety branch, PITR before it, verify, promote
--
-- clubio-dr run data-corruption TABLE PREDICATE [--at TIMESTAMP] [--branch NAME] [--yes] [--dry-run] [--json]
--
--   clubio-dr run data-corruption orders "status = 'refunded' AND amount < 0"
--   clubio-dr run data-corruption public.users "email IS NULL" --at 2024-01-15T10:30:00Z
--
-- 1. Find the corruption window: count, first and last updated_at of the rows of TABLE matching
--    PREDICATE on the branch (the project's default branch unless --branch). PREDICATE is SQL
--    typed by the on-call engineer: it runs inside a READ ONLY transaction with a
--    statement_timeout, as one statement (extended protocol: no `; other statement`); nothing
--    else is spliced into SQL — the table name is resolved by the server (to_regclass) and
--    every other value is a bound parameter.
-- 2. Safety branch pre-recovery-YYYYMMDD-HHMMSS: the branch as it is now (the corrupted data
--    stays available for forensics and to undo).
-- 3. Point-in-time branch recovery-YYYYMMDD-HHMMSS at --at, by default RECOVERY_MARGIN_MINUTES
--    (15) before the first bad updated_at (moved to the start of the history window when that
--    is later, as long as it is still before the first bad change).
-- 4. Verify: the table's rows and the predicate's matches on the recovered branch against the
--    branch; the predicate must match nothing there (else exit 4: pick an earlier --at), and
--    the rows changed on the branch since the recovery point (what promoting gives up) are
--    counted.
-- 5. Promote: make the recovery branch the project's default (asks, or --yes; refused without
--    --yes when nobody can answer). Only when the branch is the default branch.
-- Then the next steps are printed.
--
-- Environment: NEON_API_KEY, NEON_PROJECT_ID (required); NEON_DATABASE, NEON_ROLE (when the
-- branch has several), STATEMENT_TIMEOUT (60s), RECOVERY_MARGIN_MINUTES (15), NEON_TIMEOUT (600 s:
-- how long one Neon call may retry, operations included).
local env, time, neon, clubio, log, pgdump = require "env", require "time", require "neon", require "clubio", require "log", require "pgdump"
local job, branches = require "clubio.job", require "clubio.branches"

local USAGE = "clubio-dr run data-corruption TABLE PREDICATE [--at 2024-01-15T10:30:00Z] [--branch NAME] [--yes]"
local function usage(msg, hint) clubio.fail{message = msg, class = "usage", code = "usage.data_corruption", hint = hint or USAGE} end

-- arguments
local parsed = require("clubio.args").parse(arg, {options = {["--at"] = "TIMESTAMP", ["--branch"] = "NAME"},
                                                 min = 2, max = 2, usage = "TABLE and PREDICATE (quote the predicate)"})
local args, opt = {parsed[1], parsed[2]}, {at = parsed["--at"], branch = parsed["--branch"]}
if #args ~= 2 then
  usage(#args < 2 and "data-corruption needs a TABLE and a PREDICATE" or "data-corruption takes two arguments, TABLE and PREDICATE (quote the predicate)")
end
local tbl, predicate = args[1], args[2]
if tbl == "" or predicate:match("^%s*$") then usage("TABLE and PREDICATE must not be empty") end
local at
if opt.at then
  at = job.past_time(opt.at, "--at")
end
local project = env.get("NEON_PROJECT_ID")
local margin = tonumber(env.get("RECOVERY_MARGIN_MINUTES", "15"))
local stmt_timeout = env.get("STATEMENT_TIMEOUT", "60s")
if not margin or margin < 0 then clubio.fail{message = "RECOVERY_MARGIN_MINUTES must be a number of minutes >= 0", class = "config"} end
local database, role = env.get("NEON_DATABASE", ""), env.get("NEON_ROLE", "")

local neon_timeout = tonumber(env.get("NEON_TIMEOUT", "600"))
local n = neon.client{project_id = project, timeout = neon_timeout}
local J = job.new("data-corruption")
local default = branches.default(n)
local src = opt.branch and n:branch(opt.branch) or default
if not src then
  usage(opt.branch and ("no branch named '" .. opt.branch .. "' in project " .. project) or ("project " .. project .. " has no default branch"),
        "list the branches with `neonctl branches list --project-id " .. project .. "`")
end
local is_default = default and src.id == default.id
local function uri_of(b)
  return n:connection_uri{branch = b.id, database = database ~= "" and database or nil, role = role ~= "" and role or nil}
end

-- Runs fn(db, qtable) in a READ ONLY transaction with a statement_timeout on the branch b.
local function read_only(b, fn)
  local db <close> = pgdump.connect(uri_of(b))
  db:query("BEGIN TRANSACTION READ ONLY")
  db:query("SELECT set_config('statement_timeout', $1, true), set_config('TimeZone', 'UTC', true)", {stmt_timeout})
  local ok, res = pcall(function()
    local r = db:query("SELECT to_regclass($1)::text AS t", {tbl})[1]
    if not r or not r.t then return {missing = true} end
    local col = db:query("SELECT format_type(atttypid, atttypmod) AS ty FROM pg_catalog.pg_attribute " ..
                         "WHERE attrelid = $1::regclass AND attname = 'updated_at' AND NOT attisdropped", {r.t})[1]
    return fn(db, r.t, col and col.ty)
  end)
  pcall(db.query, db, "ROLLBACK")
  if not ok then error(res, 0) end
  return res
end

-- The predicate's matches; `$1::boolean AND (...)`: a bound parameter keeps the statement on
-- the extended protocol, which runs exactly one statement. The newline ends a trailing `--`.
local function matches(db, qtable, extra, params)
  local sql = "SELECT count(*) AS n, extract(epoch FROM min(updated_at))::float8 AS first, " ..
              "extract(epoch FROM max(updated_at))::float8 AS last FROM " .. qtable ..
              " WHERE $1::boolean AND (" .. predicate .. "\n)" .. (extra or "")
  local p = {"true"}
  for _, x in ipairs(params or {}) do p[#p + 1] = x end
  local ok, r = pcall(db.query, db, sql, p, {typed = true})
  if not ok then
    local m = clubio.is_error(r) and r.message or tostring(r)
    clubio.fail{message = "the predicate failed on " .. qtable .. ": " .. m, class = "usage", code = "usage.predicate",
                hint = "PREDICATE is the SQL of a WHERE clause, e.g. \"status = 'refunded' AND amount < 0\"; it runs read-only with statement_timeout " .. stmt_timeout}
  end
  return r[1]
end

-- 1. the window (read-only, so a dry run does it too)
local function find_window()
  return read_only(src, function(db, qtable, coltype)
    if not coltype then return {qtable = qtable, no_column = true} end
    local m = matches(db, qtable)
    local total = db:query("SELECT count(*) AS n FROM " .. qtable, nil, {typed = true})[1].n
    return {qtable = qtable, coltype = coltype, bad = m.n, first = m.first, last = m.last, total = total}
  end)
end
local W = J:step("find the corruption window", {
  plan = string.format("rows of %s on %s where %s (read-only, statement_timeout %s)", tbl, src.name, predicate, stmt_timeout),
  dry = find_window,
}, find_window)
if W.missing then usage("no table '" .. tbl .. "' on branch " .. src.name, "give the table as NAME or SCHEMA.NAME") end
if W.no_column then usage(W.qtable .. " has no updated_at column: the corruption window cannot be found from it",
                          "give the recovery point yourself with --at, after checking the data; or use pitr-recovery") end
if W.bad == 0 then
  clubio.fail{message = string.format("no rows of %s match the predicate on %s (%d rows checked): nothing to recover", W.qtable, src.name, W.total),
              class = "usage", code = "usage.no_match", hint = "check the predicate (it is SQL for a WHERE clause) and the table"}
end
if not W.first then
  clubio.fail{message = string.format("the %d matching rows of %s have no updated_at: the window cannot be found", W.bad, W.qtable),
              class = "usage", hint = "give the recovery point with --at"}
end
log.info(string.format("corruption window: %d of %d rows of %s match, updated between %s and %s", W.bad, W.total, W.qtable,
                       time.iso(W.first), time.iso(W.last)))
local chosen_by = "--at"
if at then
  if at >= W.first then
    usage(string.format("--at %s is not before the first bad change (%s)", time.iso(at), time.iso(W.first)),
          "choose a time before " .. time.iso(W.first) .. ", or leave --at out (" .. margin .. " minutes before it)")
  end
else
  at = math.floor(W.first - margin * 60)
  chosen_by = string.format("%g minutes before the first bad change", margin)
end

local stamp = time.format(time.now(), "%Y%m%d-%H%M%S")
local safety, recovery = "pre-recovery-" .. stamp, "recovery-" .. stamp

-- 2. the safety branch
J:step("create the safety branch " .. safety, {plan = "copy of " .. src.name .. " as it is now (with the bad data)"}, function()
  return n:create_branch{name = safety, parent = src.id, endpoint = false}
end)

-- 3. the point-in-time branch
-- A dry run creates nothing, so it checks the point against the history window itself and
-- proposes what a real run would do: the window's start when that is still before the first
-- bad change, else it says the point cannot be recovered. The window cannot start before the
-- project's retention reaches back, nor before the project existed.
local function dry_point()
  local ok, p = pcall(n.project, n)
  local retention = ok and type(p) == "table" and tonumber(p.history_retention_seconds)
  if not retention then return nil end
  local lo = time.now() - retention
  local created = type(p.created_at) == "string" and select(2, pcall(time.parse, p.created_at))
  if type(created) == "number" and created > lo then lo = created end
  if at >= lo then return nil end
  local from = math.ceil(lo) + 1
  if from > math.floor(W.first) - 1 or chosen_by == "--at" then
    clubio.fail{message = string.format("%s is outside the history window of %s (retention %d s: from about %s)%s",
                                        time.iso(at), src.name, retention, time.iso(lo),
                                        from > math.floor(W.first) - 1 and ", and so is every point before the first bad change" or ""),
                class = "usage", code = "neon.outside_history",
                hint = from > math.floor(W.first) - 1 and "point-in-time recovery cannot reach before the corruption: restore from a backup branch or an S3 export"
                  or "choose --at between " .. time.iso(from) .. " and " .. time.iso(W.first)}
  end
  log.warn(string.format("%s is before the history window of %s (retention %d s); a real run uses %s, still before the first bad change",
                         time.iso(at), src.name, retention, time.iso(from)))
  at = from
  chosen_by = "the start of the history window"
  return nil
end
local rec = J:step("create " .. recovery, {
  plan = string.format("branch of %s as of %s (%s), with a read-write endpoint", src.name, time.iso(at), chosen_by),
  hint = "the safety branch " .. safety .. " keeps the current data; nothing else was changed",
  dry = dry_point,
}, function()
  local ok, b = pcall(n.create_branch, n, {name = recovery, parent = src.id, at = at, endpoint = "read_write"})
  if ok then return b end
  -- the default point may be older than the branch's history: use the window's start when
  -- that is still before the first bad change
  local from = clubio.is_error(b) and b.code == "neon.outside_history" and chosen_by ~= "--at"
               and tostring(b.message):match("available from (%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z?)")
  local lo = from and select(2, pcall(time.parse, from))
  -- whole seconds: the point must be a full second before the first bad change, so that no
  -- clock skew or rounding can put it after
  if type(lo) ~= "number" or math.ceil(lo) + 1 > math.floor(W.first) - 1 then error(b, 0) end
  log.warn(string.format("%s is before the history window of %s (from %s); using %s, still before the first bad change",
                         time.iso(at), src.name, from, time.iso(math.ceil(lo) + 1)))
  at = math.ceil(lo) + 1
  chosen_by = "the start of the history window"
  return n:create_branch{name = recovery, parent = src.id, at = at, endpoint = "read_write"}
end)

if J.dry_run then
  return J:finish({table = W.qtable, branch = src.name, bad_rows = W.bad, first_bad = time.iso(W.first), last_bad = time.iso(W.last),
                   recovery_point = time.iso(at, at % 1 ~= 0)},
                  string.format("dry run: %d bad row(s) in %s (first %s); would recover %s as of %s; nothing was changed",
                                W.bad, W.qtable, time.iso(W.first), src.name, time.iso(at)))
end

-- 4. verify
local V = J:step("verify the recovered data", {plan = "row counts and the predicate on " .. recovery .. " against " .. src.name}, function()
  local v = read_only(rec, function(db, qtable)
    if qtable == nil then return nil end
    local m = matches(db, qtable)
    return {total = db:query("SELECT count(*) AS n FROM " .. qtable, nil, {typed = true})[1].n, bad = m.n}
  end)
  if not v or v.missing then
    clubio.fail{message = string.format("%s has no table %s as of %s", recovery, tbl, time.iso(at)), class = "verify",
                hint = "the table did not exist then: choose a later --at (before " .. time.iso(W.first) .. ")"}
  end
  -- what promoting gives up: rows changed on the branch after the recovery point. The bad rows
  -- are among them (every one was updated after the point); only the others may be legitimate
  -- changes worth re-applying.
  v.changed_since = read_only(src, function(db, qtable)
    return db:query("SELECT count(*) AS n FROM " .. qtable .. " WHERE updated_at > to_timestamp($1::float8)", {tostring(at)}, {typed = true})[1].n
  end)
  v.other_changes = math.max(0, v.changed_since - W.bad)
  if v.bad > 0 then
    clubio.fail{message = string.format("%d row(s) of %s still match the predicate on %s (as of %s)", v.bad, W.qtable, recovery, time.iso(at)),
                class = "verify", code = "verify.still_corrupt",
                hint = string.format("the corruption started earlier: re-run with an earlier --at; %s and %s are kept for inspection", recovery, safety)}
  end
  return v
end)

local rec_uri = job.describe_url(uri_of(rec)).display .. "   (with its password: neonctl connection-string " .. recovery .. " --project-id " .. project .. ")"
local report = string.format([[
data-corruption: %s on %s (project %s)
  bad rows          %d of %d match, updated %s .. %s
  recovery point    %s (%s)
  recovered branch  %s: %d rows, %d match the predicate
                    %s
  changed since     %d row(s) of %s were updated on %s after the recovery point (lost if promoted):
                    the %d bad row(s), and %d other change(s) that may be legitimate
  safety branch     %s (the data as it was before recovery)]],
  W.qtable, src.name, project, W.bad, W.total, time.iso(W.first), time.iso(W.last), time.iso(at), chosen_by,
  recovery, V.total, V.bad, rec_uri, V.changed_since, W.qtable, src.name, math.min(W.bad, V.changed_since), V.other_changes, safety)
if not J.json then io.stdout:write(report, "\n"); io.stdout:flush() end

-- 5. promote
local promoted = false
if is_default then
  J:step("promote " .. recovery, {
    plan = "make " .. recovery .. " the default branch of " .. project,
    destructive = true,
    confirm = string.format("Make %s (as of %s) the default branch of %s instead of %s? %d row(s) changed since then will not be in it",
                            recovery, time.iso(at), project, src.name, V.changed_since),
    hint = "undo with: neonctl branches set-default " .. src.name .. " --project-id " .. project,
  }, function()
    n:set_default(rec.id)
    promoted = true
  end)
end

local next_steps
if promoted then
  next_steps = string.format([[
%s is now the default branch of %s.
next steps:
  1. point the application at the new default branch (its endpoint host changed):
       neonctl connection-string %s --project-id %s
  2. review the %d other change(s) made after %s (rows of %s that do not match the predicate) and
     re-apply those that were legitimate; compare with %s. The %d bad row(s) are not to be re-applied.
  3. undo if needed: neonctl branches set-default %s --project-id %s
  4. keep %s and %s until the incident review, then delete them]],
    recovery, project, recovery, project, V.other_changes, time.iso(at), W.qtable, safety, W.bad, src.name, project, src.name, safety)
else
  next_steps = string.format([[
%s was not promoted (%s is not the default branch).
next steps:
  1. check the data on %s
  2. use it: restore %s from it (keeps the endpoint; its current data stays as %s-before-%s):
       require("neon").client{}:restore_branch{branch = "%s", source = "%s", preserve_under_name = "%s-before-%s"}
     or make it the default:  neonctl branches set-default %s --project-id %s]],
    recovery, src.name, recovery, src.name, src.name, recovery, src.name, recovery, src.name, recovery, recovery, project)
end
-- a new default branch, or the branch restore suggested above (it removes the branch's
-- replication slots), leaves the DR replica behind: say so, with the command
local dr_note = require("clubio.dr").after_branch_restore{branch = promoted and recovery or src.name, promoted = promoted,
                                                          planned = not promoted}
if dr_note.affected ~= false then next_steps = next_steps .. "\n  replication: " .. dr_note.message end
J:finish({table = W.qtable, branch = src.name, bad_rows = W.bad, first_bad = time.iso(W.first), last_bad = time.iso(W.last),
          recovery_point = time.iso(at, at % 1 ~= 0), chosen_by = chosen_by, safety_branch = safety, recovery_branch = recovery,
          recovered_rows = V.total, recovered_bad = V.bad, changed_since = V.changed_since, other_changes = V.other_changes, promoted = promoted,
          connection = job.describe_url(uri_of(rec)).display}, next_steps)
return 0
