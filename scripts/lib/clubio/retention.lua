-- GFS retention (grandfather-father-son): which backups to keep, and why. A pure decision
-- function — no I/O — so that a calendar of backups can be tested exactly.
--
--   local retention = require "clubio.retention"
--   local policy = retention.policy{daily = 30, weekly = 90, monthly = 365}   -- days; checked
--   for _, d in ipairs(retention.decide(backups, now, policy)) do
--     print(d.backup.name, d.keep and "keep" or "delete", d.tier, d.reason)
--   end
--
-- backups: {{time = epoch, verified = bool, ...}, ...} (other fields are carried through).
-- Rules, in this order:
--   daily    every backup younger than `daily` days;
--   weekly   the oldest verified backup of each week (weeks start on `week_start`, 0 = Sunday,
--            so it is the Sunday backup when there is one), younger than `weekly` days;
--   monthly  the oldest verified backup of each calendar month (the 1st's), younger than
--            `monthly` days;
--   (a bucket with no verified backup is represented by its oldest backup)
--   newest verified: the newest verified backup is never deleted, whatever its age (if none is
--            verified, the newest backup is kept instead).
-- The oldest-in-bucket choice is stable: a newer backup arriving in the same week never
-- changes which one the week keeps. "Younger than N days" is age < N x 86400 s at `now`.
-- A kept backup's tier is the longest-lived rule that keeps it; `until` says when that ends.
local cron = require "clubio.cron"
local M = {}

M.DEFAULTS = {daily = 30, weekly = 90, monthly = 365, week_start = 0}
local DAY = 86400

local function fail(msg, hint)
  require("clubio").fail{message = msg, class = "usage", code = "usage.retention", hint = hint}
end

-- A checked policy: unknown keys and bad numbers are errors. A tier of 0 days is off.
function M.policy(p)
  p = p or {}
  local out = {}
  for k, v in pairs(p) do
    if M.DEFAULTS[k] == nil then
      fail(string.format("unknown retention policy key '%s'", tostring(k)), "use daily, weekly, monthly (days) and week_start (0-6)")
    end
    if type(v) ~= "number" or v < 0 or v ~= math.floor(v) then
      fail(string.format("retention %s must be a whole number >= 0, got %s", k, tostring(v)))
    end
    out[k] = math.tointeger(v)
  end
  for k, v in pairs(M.DEFAULTS) do if out[k] == nil then out[k] = v end end
  if out.week_start > 6 then fail("retention week_start must be 0 (Sunday) to 6 (Saturday)") end
  if out.daily + out.weekly + out.monthly == 0 then
    fail("a retention policy with every tier at 0 days would delete every backup but one",
         "keep at least one tier, e.g. daily = 30")
  end
  return out
end

local function ymd(t)
  local f = cron.fields(t)
  return string.format("%04d-%02d-%02d", f.year, f.month, f.day)
end

local function fmt_age(age)
  local d = age / DAY
  if d < 1 then return string.format("%.0fh old", age / 3600) end
  return string.format("%.0fd old", math.floor(d))
end

-- Returns the decisions, newest backup first: {backup, keep, tier, reason, ["until"] = epoch,
-- week = "YYYY-MM-DD" (the week's first day), month = "YYYY-MM"}.
function M.decide(backups, now, policy)
  policy = M.policy(policy)
  local list = {}
  for i, b in ipairs(backups) do
    if type(b.time) ~= "number" then fail(string.format("backup %d has no time", i)) end
    list[#list + 1] = {backup = b, keep = false, i = i}
  end
  -- newest first; equal times keep their input order
  table.sort(list, function(a, b)
    if a.backup.time ~= b.backup.time then return a.backup.time > b.backup.time end
    return a.i < b.i
  end)

  -- bucket representatives: iterating newest -> oldest, the last one seen is the oldest
  local week_rep, month_rep = {}, {}
  local function better(cur, d) -- is d a better representative than cur? (oldest verified first)
    if not cur then return true end
    local cv, dv = cur.backup.verified == true, d.backup.verified == true
    if cv ~= dv then return dv end
    return true -- same verified state: d is older (or equal and later in input)
  end
  for _, d in ipairs(list) do
    local t = d.backup.time
    local days = math.floor(t) // DAY
    local wday = (days + 4) % 7
    local wstart = days - (wday - policy.week_start) % 7
    d.week = ymd(wstart * DAY)
    local f = cron.fields(t)
    d.month = string.format("%04d-%02d", f.year, f.month)
    if better(week_rep[d.week], d) then week_rep[d.week] = d end
    if better(month_rep[d.month], d) then month_rep[d.month] = d end
  end

  for _, d in ipairs(list) do
    local t, age = d.backup.time, now - d.backup.time
    local why = {}
    local function tier(name, days, text)
      if days > 0 and age < days * DAY then
        local untl = t + days * DAY
        if not d.keep or untl > d["until"] then
          d.keep, d.tier, d["until"] = true, name, untl
          d.reason = string.format("%s: %s, %s (kept %d days, until %s)", name, text, fmt_age(age), days, ymd(untl))
        end
      elseif days > 0 then
        why[#why + 1] = string.format("%s older than %d days", text, days)
      end
    end
    tier("daily", policy.daily, "daily backup")
    if week_rep[d.week] == d then tier("weekly", policy.weekly, "weekly backup of the week of " .. d.week)
    elseif policy.weekly > 0 and age < policy.weekly * DAY then
      why[#why + 1] = "not the week's first backup (" .. ymd(week_rep[d.week].backup.time) .. " is)"
    end
    if month_rep[d.month] == d then tier("monthly", policy.monthly, "monthly backup of " .. d.month)
    elseif policy.monthly > 0 and age < policy.monthly * DAY then
      why[#why + 1] = "not the month's first backup (" .. ymd(month_rep[d.month].backup.time) .. " is)"
    end
    if not d.keep then
      d.reason = "expired: " .. fmt_age(age) .. (#why > 0 and ("; " .. table.concat(why, "; ")) or "")
    end
  end

  -- the newest verified backup survives any policy (or the newest at all, if none is verified)
  local newest
  for _, d in ipairs(list) do
    if d.backup.verified == true then newest = d; break end
  end
  local label = "newest verified backup"
  if not newest then newest, label = list[1], "newest backup (none is verified)" end
  if newest then
    newest.newest_verified = true
    if not newest.keep then
      newest.keep, newest.tier = true, "newest"
      newest.reason = label .. ": never deleted (" .. fmt_age(now - newest.backup.time) .. ")"
    end
  end
  for _, d in ipairs(list) do d.i = nil end
  return list
end

-- Counts of a decision list: {keep =, delete =, daily =, weekly =, monthly =, newest =}.
function M.summary(decisions)
  local s = {keep = 0, delete = 0, daily = 0, weekly = 0, monthly = 0, newest = 0}
  for _, d in ipairs(decisions) do
    if d.keep then
      s.keep = s.keep + 1
      s[d.tier] = s[d.tier] + 1
    else
      s.delete = s.delete + 1
    end
  end
  return s
end

return M
