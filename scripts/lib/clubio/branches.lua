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

function M.default(n)
  for _, b in ipairs(n:branches()) do if b.default then return b end end
  return nil
end

return M
