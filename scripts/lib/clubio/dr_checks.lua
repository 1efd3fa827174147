-- dr-test's application checks (--checks FILE, DR_TEST_CHECKS), for both scenarios: the DR
-- database after a failover, the restore after a complete loss.
--
--   local results, failed = require("clubio.dr_checks").run(conn, {
--     {name = "orders readable", sql = "SELECT count(*) FROM orders", min_rows = 1},
--     {name = "can insert", sql = "INSERT INTO orders ...", write = true},   -- in a rolled-back transaction
--     {name = "admin exists", sql = "SELECT email FROM users WHERE id = $1", params = {1}, expect = "a@b.c"},
--   })
--   results: {name, ok, rows, error}, in order; failed: how many did not pass.
--
-- And the report's checklist, for both scenarios:
--   local item = require("clubio.dr_checks").checklist(J, report)
--   local ok, res = item("execution", "run the failover", function() ... return {summary = "..."} end, {plan =, hint =})
local clubio, log, time = require "clubio", require "log", require "time"

local M = {}

function M.run(conn, list)
  local results, bad = {}, 0
  for n, c in ipairs(list) do
    local r = {name = c.name or ("check " .. n)}
    local okc, rows = pcall(function()
      if c.write then conn:query("BEGIN") end
      local rows = conn:query(c.sql, c.params)
      if c.write then conn:query("ROLLBACK") end
      return rows
    end)
    if not okc then
      pcall(conn.query, conn, "ROLLBACK")
      r.ok, r.error = false, log.redact(clubio.is_error(rows) and rows.message or tostring(rows))
    else
      r.rows, r.ok = #rows, true
      if c.min_rows and #rows < c.min_rows then r.ok, r.error = false, string.format("%d rows, expected at least %d", #rows, c.min_rows) end
      if c.expect ~= nil then
        local first = rows[1] and select(2, next(rows[1]))
        if tostring(first) ~= tostring(c.expect) then r.ok, r.error = false, string.format("got %s, expected %s", tostring(first), tostring(c.expect)) end
      end
    end
    if not r.ok then bad = bad + 1 end
    results[#results + 1] = r
  end
  return results, bad
end

-- One checklist item: a job step (journal, timings) and a line of report.checklist; returns
-- pcall's ok and the step's result or error.
function M.checklist(J, report)
  return function(phase, name, fn, opts)
    opts = opts or {}
    local t0 = time.monotonic()
    local ok, res = pcall(J.step, J, name, {plan = opts.plan, hint = opts.hint}, fn)
    local entry = {phase = phase, item = name, ok = ok, seconds = time.monotonic() - t0}
    if not ok then entry.error = log.redact(clubio.is_error(res) and res.message or tostring(res)) end
    if ok and type(res) == "table" and res.summary then entry.detail = res.summary end
    report.checklist[#report.checklist + 1] = entry
    return ok, res
  end
end

-- The report's checklist as Markdown lines ("- [x] phase: item (1.23 s) — detail").
function M.checklist_lines(list)
  local out = {}
  for _, c in ipairs(list) do
    out[#out + 1] = string.format("- [%s] %s: %s (%.2f s)%s", c.ok and "x" or " ", c.phase, c.item, c.seconds,
                                  c.error and (" — FAILED: " .. c.error) or (c.detail and (" — " .. c.detail) or ""))
  end
  return out
end

-- A measured duration for the report: "42.0 s", "3.5 min", "2.25 h", or "not measured".
function M.duration(s)
  if not s then return "not measured" end
  if s < 120 then return string.format("%.1f s", s) end
  if s < 7200 then return string.format("%.1f min", s / 60) end
  return string.format("%.2f h", s / 3600)
end

-- The report's end as Markdown lines: the application checks (under `title`) and the notes,
-- each section only when it has something.
function M.report_tail_lines(report, title)
  local out = {}
  if report.checks then
    out[#out + 1] = ""
    out[#out + 1] = "## " .. title
    out[#out + 1] = ""
    for _, c in ipairs(report.checks) do
      out[#out + 1] = string.format("- [%s] %s%s", c.ok and "x" or " ", c.name, c.error and (": " .. c.error) or "")
    end
  end
  if #report.notes > 0 then
    out[#out + 1] = ""
    out[#out + 1] = "## Notes"
    out[#out + 1] = ""
    for _, n in ipairs(report.notes) do out[#out + 1] = "- " .. n end
  end
  return out
end

-- Writes the report as base.json and base.md (both redacted, each replaced whole) in dir.
function M.write_report(dir, base, report, markdown)
  require("proc").run{argv = {"mkdir", "-p", dir}, check = true}
  local json = log.redact(require("cjson").encode(report))
  for path, text in pairs{[base .. ".json"] = json .. "\n", [base .. ".md"] = log.redact(markdown)} do
    local ok, err = pcall(require("pipe").write_file, path, text, {overwrite = true})
    if not ok then
      clubio.fail{message = "cannot write " .. path .. ": " .. tostring(type(err) == "table" and err.message or err),
                  class = "failure", code = "dr.report"}
    end
  end
end

return M
