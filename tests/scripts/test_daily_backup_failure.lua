-- The daily-backup-failure runbook end to end on neon-local, in projects of the test's own:
-- the escalation level from the journal and from the backup branches' dates, a declined re-run
-- (non-interactive without --yes), the re-run with --yes that makes today's backup, Neon down
-- (recorded with a time to retry), a rejected key, bad arguments.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local time, neon, cjson, job = require "time", require "neon", require "cjson", require "clubio.job"

local dir = T.tmpdir()
local today = time.start_of_day(time.now())
local P1 = U.project("dbf-a")   -- no backups at all
local P2 = U.project("dbf-b")   -- only yesterday's backup

-- a journal where backup-database failed on the given days (offsets from today)
local function journal(name, failed_days, project)
  local path = dir .. "/" .. name .. ".jsonl"
  local lines = {}
  for _, off in ipairs(failed_days) do
    local t = time.add_days(today, -off) + 2 * 3600 + 60
    if t > time.now() then t = time.now() - 60 end
    lines[#lines + 1] = cjson.encode{run = "backup-database-" .. off, job = "backup-database", step = "create backup-x",
                                     status = "failed", start = time.iso(t), ["end"] = time.iso(t + 3),
                                     error = "neon api call gave up after 6 attempts", neon_project = project}
  end
  U.write(path, table.concat(lines, "\n") .. (#lines > 0 and "\n" or ""))
  return path
end

local function backups(project)
  local out = {}
  for _, b in ipairs(neon.client{project_id = project}:branches()) do
    if b.name:match("^backup%-") then out[#out + 1] = b.name end
  end
  return out
end

T.case("two failed days in the journal and no backup: P1, and a declined re-run changes nothing", function()
  local j = journal("a", {1, 0})
  local r = U.run({"daily-backup-failure"}, {NEON_PROJECT_ID = P1, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 5, r.stderr)
  T.match(r.stdout, "escalation: P1")
  T.match(r.stdout, "no backup%-YYYYMMDD branch")
  T.match(r.stdout, "2 failed day%(s%) in a row")
  T.match(r.stderr, "refusing without confirmation")
  T.eq(#backups(P1), 0, "nothing created")
  local runs = job.runs{path = j, job = "daily-backup-failure"}
  T.eq(runs[1].status, "declined")
  -- --dry-run: the same diagnosis, nothing changed, exit 0
  r = U.run({"daily-backup-failure", "--dry-run", "--json"}, {NEON_PROJECT_ID = P1, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.escalation.level, "P1")
  T.eq(#backups(P1), 0)
end)

T.case("--yes re-runs backup-database: today's backup exists, resolved; a second run has nothing to do", function()
  local j = journal("a2", {1, 0})
  local r = U.run({"daily-backup-failure", "--yes", "--json"}, {NEON_PROJECT_ID = P1, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 0, r.stderr)
  local res = r.doc.result
  T.eq(res.escalation.level, "P1", "two failed days stay a P1 even once fixed")
  T.eq(res.resolution.action, "re-run")
  T.eq(res.resolution.resolved, true)
  T.eq(res.resolution.branch, "backup-" .. time.ymd(time.now()))
  T.eq(backups(P1)[1], "backup-" .. time.ymd(time.now()))
  -- the child's run is in the journal too
  T.eq(job.runs{path = j, job = "backup-database"}[1].status, "ok")
  r = U.run({"daily-backup-failure", "--json"}, {NEON_PROJECT_ID = P1, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.escalation.level, "none")
  T.eq(r.doc.result.resolution.action, "none")
  T.eq(#backups(P1), 1)
end)

T.case("a human run: the fix withdraws the escalation, and the child's log lines are human lines", function()
  local P3 = U.project("dbf-c")
  local j = journal("h", {1, 0})
  local r = U.run({"daily-backup-failure", "--yes"}, {NEON_PROJECT_ID = P3, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "escalation: P1 —", "the escalation is said before the fix")
  T.match(r.stdout, "resolution: backup%-database re%-ran: backup%-%d+ exists now\nescalation: P1 withdrawn")
  local _, n = r.stdout:gsub("page the on%-call lead", "")
  T.eq(n, 1, "the P1 message is printed once, not again after the fix")
  for line in (r.stdout .. r.stderr):gmatch("[^\n]+") do
    T.no_match(line, "^%s*{", "no JSON line in a human run: " .. line)
  end
  T.match(r.stderr, "child=backup%-database", "the child's log lines are ours, tagged")
end)

T.case("a run that failed outside a step is reported with its real error", function()
  local P4 = U.project("dbf-d")
  local j = dir .. "/real-error.jsonl"
  -- backup-database against an API that refuses connections: it fails, and the journal keeps why
  local b = U.run({"backup-database"}, {NEON_PROJECT_ID = P4, CLUBIO_DR_JOURNAL = j, NEON_API_TIMEOUT = "3",
                                        NEON_API_HOST = "http://127.0.0.1:" .. U.closed_port() .. "/api/v2"})
  T.eq(b.status, 1, b.stderr)
  local runs = job.runs{path = j, job = "backup-database"}
  T.eq(runs[1].status, "failed")
  T.no_match(runs[1].error, "stopped before finishing", "the real error, not a placeholder")
  local r = U.run({"daily-backup-failure", "--dry-run"}, {NEON_PROJECT_ID = P4, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 0, r.stderr)
  T.match(r.stdout, "last error: [^)]*127%.0%.0%.1")
  T.no_match(r.stdout, "stopped before finishing")
end)

T.case("from branch dates: yesterday's backup only is P2; three days old is P1", function()
  local n = neon.client{project_id = P2}
  n:create_branch{name = "backup-" .. time.ymd(time.add_days(today, -1)), endpoint = false}
  -- another project's failures in the same journal do not count
  local j = journal("b", {1, 0}, "someone-elses-project")
  local r = U.run({"daily-backup-failure", "--json"}, {NEON_PROJECT_ID = P2, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 5, r.stderr)
  -- --json: the refusal goes to stderr, nothing on stdout but the diagnosis is in the log
  T.match(r.stderr, "escalation P2")
  local b = n:branch("backup-" .. time.ymd(time.add_days(today, -1)))
  n:delete_branch(b)
  n:create_branch{name = "backup-" .. time.ymd(time.add_days(today, -3)), endpoint = false}
  r = U.run({"daily-backup-failure", "--dry-run", "--json"}, {NEON_PROJECT_ID = P2, CLUBIO_DR_JOURNAL = j})
  T.eq(r.status, 0, r.stderr)
  T.eq(r.doc.result.escalation.level, "P1")
  T.eq(r.doc.result.latest.missed_days, 3)
  T.match(r.doc.result.escalation.message, "3 consecutive days")
end)

T.case("Neon API down: recorded in the journal with a time to retry; P1 from the journal", function()
  local j = journal("c", {2, 1})
  local r = U.run({"daily-backup-failure", "--yes"}, {NEON_PROJECT_ID = P1, CLUBIO_DR_JOURNAL = j, NEON_CHECK_TIMEOUT = "2",
                                                    NEON_API_HOST = "http://127.0.0.1:" .. U.closed_port() .. "/api/v2"})
  T.eq(r.status, 1, r.stderr)
  T.match(r.stdout, "UNREACHABLE")
  T.match(r.stdout, "escalation: P1")
  T.match(r.stdout, "retry at %d%d%d%d%-")
  local found
  for line in U.read(j):gmatch("[^\n]+") do
    local e = cjson.decode(line)
    if e.job == "daily-backup-failure" and e.status == "deferred" then found = e end
  end
  T.ok(found, "deferred entry in the journal")
  T.ok(time.parse(found.retry_at) > time.now(), "retry in the future")
end)

T.case("a rejected key, bad arguments, a missing variable", function()
  local r = U.run({"daily-backup-failure"}, {NEON_PROJECT_ID = P1, NEON_API_KEY = "wrong-key-wrong-key", CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 1)
  T.match(r.stdout, "refuses us")
  T.no_match(r.stdout .. r.stderr, "wrong%-key%-wrong%-key", "the key is not printed")
  r = U.run({"daily-backup-failure", "now"}, {NEON_PROJECT_ID = P1, CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 2)
  r = U.run({"daily-backup-failure"}, {NEON_PROJECT_ID = false, CLUBIO_DR_JOURNAL = "off"})
  T.eq(r.status, 3)
  T.match(r.stderr, "NEON_PROJECT_ID")
end)

return T.finish()
