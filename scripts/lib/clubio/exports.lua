-- The S3 exports of the database: listing them newest first, finding the latest.
local env = require "env"
local M = {}

M.PATTERN = "clubio%-db%-(%d%d%d%d%d%d%d%d)%-(%d%d%d%d%d%d)%.sql%.gz%.enc$"

-- Returns the exports under prefix, newest first: {key, size, last_modified, stamp, has_manifest}.
function M.list(c, bucket, prefix)
  prefix = prefix or env.get("EXPORT_PREFIX", "database/")
  local items, manifests = {}, {}
  for obj in c:list{bucket = bucket, prefix = prefix} do
    local d, t = obj.key:match(M.PATTERN)
    if d then
      items[#items + 1] = {key = obj.key, size = obj.size, last_modified = obj.last_modified, stamp = d .. "-" .. t}
    elseif obj.key:match("%.manifest%.json$") then
      manifests[obj.key:gsub("%.manifest%.json$", "")] = true
    end
  end
  table.sort(items, function(a, b) return a.stamp > b.stamp end)
  for _, it in ipairs(items) do it.has_manifest = manifests[it.key] == true end
  return items
end

return M
