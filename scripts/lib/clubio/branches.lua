-- Neon backup branches: `backup-YYYYMMDD` made daily from the default branch.
local time = require "time"
local M = {}

-- The backup branches of a client's project, newest first, each with `day` (epoch of its date)
-- and `created` (epoch of created_at).
function M.backups(n)
  local out = {}
  for _, b in ipairs(n:branches()) do
    local ymd = b.name:match("^backup%-(%d%d%d%d%d%d%d%d)$")
    if ymd then
      b.day = time.parse_ymd(ymd)
      b.created = b.created_at and time.parse(b.created_at) or b.day
      out[#out + 1] = b
    end
  end
  table.sort(out, function(a, b) return a.created > b.created end)
  return out
end

-- Backup branches as GFS retention items (clubio.retention.decide): the name's date is the
-- backup's day; created_at gives its time when it is that day. A ready branch is verified.
function M.retention_items(list)
  local items = {}
  for _, b in ipairs(list) do
    local t = b.day
    if b.created and time.ymd(b.created) == time.ymd(b.day) then t = b.created end
    items[#items + 1] = {name = b.name, id = b.id, time = t, verified = b.current_state == nil or b.current_state == "ready",
                         default = b.default}
  end
  return items
end

function M.default(n)
  for _, b in ipairs(n:branches()) do if b.default then return b end end
  return nil
end

-- The default branch, or a one-line failure naming the project.
function M.require_default(n, project)
  local b = M.default(n)
  if not b then
    require("clubio").fail{message = "neon project " .. tostring(project) .. " has no default branch", class = "failure",
                           hint = "set one with `neonctl branches set-default BRANCH --project-id " .. tostring(project) .. "`"}
  end
  return b
end

return M
