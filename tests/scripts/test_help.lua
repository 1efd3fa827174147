-- --help on every script and runbook, under the sandbox's full configuration (a database, S3,
-- Neon: running any of them would change something): it prints the script's header, exits 0
-- and changes nothing — no branch, no object, no table, no journal line. An option a script does
-- not declare is a usage error (exit 2) that names it, and also changes nothing.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. os.getenv("CLUBIO_DR_TEST_DIR") .. "/scripts/?.lua;" .. package.path
local T = require "testing"
local U = require "scriptutil"
local env, proc, cjson, neon, s3, pgdump = require "env", require "proc", require "cjson", require "neon", require "s3", require "pgdump"

local dir = T.tmpdir()
local journal = dir .. "/journal.jsonl"
local E = {CLUBIO_DR_JOURNAL = journal, CLUBIO_DR_STATE = dir .. "/state", CLUBIO_DR_VERIFY_HISTORY = dir .. "/history.jsonl"}

local function list_scripts()
  local r = proc.run{argv = {U.BIN, "list", "--json"}}
  assert(r.status == 0, r.stderr)
  local out = {}
  for _, s in ipairs(cjson.decode(r.stdout)) do out[#out + 1] = s end
  return out
end

-- the header as --help prints it: the leading `--` lines without their marker
local function header(path)
  local lines = {}
  for line in io.lines(path) do
    if line:sub(1, 2) ~= "--" then break end
    lines[#lines + 1] = (line:gsub("^%-%- ?", "")) .. "\n"
  end
  return table.concat(lines)
end

-- what a script could change: Neon branches, S3 objects, tables, the journal
local function state()
  local names = {}
  for _, b in ipairs(neon.client{}:branches()) do names[#names + 1] = b.name end
  table.sort(names)
  local keys = {}
  local c = s3.client{}
  for o in c:list{bucket = env.get("BACKUP_S3_BUCKET")} do keys[#keys + 1] = o.key .. "@" .. tostring(o.etag) end
  table.sort(keys)
  local db <close> = pgdump.connect(env.get("DATABASE_URL"))
  local tables = db:query("SELECT count(*) AS n FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")[1].n
  return table.concat(names, ",") .. "|" .. table.concat(keys, ",") .. "|" .. tables .. "|" .. tostring(U.read(journal))
end

local scripts = list_scripts()
T.ok(#scripts >= 20, "the list has every script and runbook")

T.case("run NAME --help and help NAME: the header, exit 0, nothing changed", function()
  local before = state()
  for _, s in ipairs(scripts) do
    local want = header(s.path)
    for _, argv in ipairs{{s.name, "--help"}, {s.name, "-h"}, {s.name, "--yes", "--help"}} do
      local r = U.run(argv, E)
      T.eq(r.status, 0, s.name .. ": " .. r.stderr)
      T.eq(r.stdout, want, s.name)
      T.eq(r.stderr, "", s.name .. " says nothing else")
    end
    local h = proc.run{argv = {U.BIN, "help", s.name}}
    T.eq(h.status, 0, s.name)
    T.eq(h.stdout, want, "help " .. s.name)
  end
  T.eq(state(), before, "no branch, object, table or journal line was made")
end)

T.case("an undeclared option is a usage error naming it, for every script; nothing changed", function()
  local before = state()
  for _, s in ipairs(scripts) do
    local r = U.run({s.name, "--no-such-option"}, E)
    T.eq(r.status, 2, s.name .. ": " .. r.stdout .. r.stderr)
    T.match(r.stderr, "unknown option '%-%-no%-such%-option'", s.name)
    T.match(r.stderr, "HINT: see clubio%-dr help " .. s.name:gsub("%-", "%%-"), s.name)
  end
  T.eq(state(), before, "no branch, object, table or journal line was made")
end)

return T.finish()
