-- Cron expressions (UTC): parsing and next/previous fire times, with Vixie cron's rules.
--
--   local cron = require "clubio.cron"
--   local c = cron.parse("0 2 * * sun")        -- raises a usage error naming the bad field
--   c:next(time.parse("2024-01-15T10:30:00Z")) --> epoch of 2024-01-21T02:00:00Z (strictly after)
--   c:prev(now)                                --> the latest fire time <= now (nil if none)
--   c:matches(t)                               --> true when minute t is a fire time
--
-- Five fields: minute hour day-of-month month day-of-week. Each is `*`, a value, a range `a-b`,
-- a step `*/n`, `a-b/n` or `a/n` (a to the field's end), or a comma list of those. Months and
-- weekdays take names (jan..dec, sun..sat, any case); day-of-week 0 and 7 are Sunday. Macros:
-- @yearly (@annually), @monthly, @weekly, @daily (@midnight), @hourly.
--
-- Day-of-month and day-of-week: when both are restricted (neither field starts with `*`), a day
-- matches if EITHER matches ("0 0 1 * mon" fires on the 1st and on every Monday), as Vixie cron
-- does; when either starts with `*`, both must match. Times are UTC; there are no DST gaps.
--
-- Pure Lua (no host modules): the date arithmetic is Howard Hinnant's days-from-civil.
local M = {}

local MONTHS = {jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10,
                nov = 11, dec = 12}
local DAYS = {sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6}

local FIELDS = {
  {key = "minute", what = "minute", min = 0, max = 59},
  {key = "hour", what = "hour", min = 0, max = 23},
  {key = "dom", what = "day of month", min = 1, max = 31},
  {key = "month", what = "month", min = 1, max = 12, names = MONTHS},
  {key = "dow", what = "day of week", min = 0, max = 7, names = DAYS},
}

M.MACROS = {
  ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
  ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *", ["@hourly"] = "0 * * * *",
}

-- ---- civil dates (proleptic Gregorian, UTC) --------------------------------------------

function M.days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

function M.civil_from_days(z)
  z = z + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, d
end

-- epoch seconds of a UTC date-time
function M.epoch(y, mo, d, h, mi, s)
  return M.days_from_civil(y, mo, d) * 86400 + (h or 0) * 3600 + (mi or 0) * 60 + (s or 0)
end

-- {year, month, day, hour, min, sec, wday (0 = Sunday)} of an epoch, UTC
function M.fields(t)
  t = math.floor(t)
  local days = t // 86400
  local secs = t - days * 86400
  local y, m, d = M.civil_from_days(days)
  return {year = y, month = m, day = d, hour = secs // 3600, min = secs % 3600 // 60, sec = secs % 60,
          wday = (days + 4) % 7}
end

-- ---- parsing -----------------------------------------------------------------------------

local function fail(expr, msg)
  require("clubio").fail{message = string.format("invalid cron expression '%s': %s", expr, msg), class = "usage",
                         code = "usage.cron",
                         hint = "five fields: minute hour day-of-month month day-of-week (UTC), e.g. '0 2 * * *', or @daily"}
end

local function value(expr, f, s)
  local n = s:match("^%d+$") and math.tointeger(tonumber(s))
  if not n and f.names then n = f.names[s:lower()] end
  if not n then
    fail(expr, string.format("%s '%s' is not a number%s", f.what, s, f.names and " or a name" or ""))
  end
  if n < f.min or n > f.max then
    fail(expr, string.format("%s %d is out of range %d-%d", f.what, n, f.min, f.max))
  end
  return n
end

local function parse_field(expr, f, text)
  local set = {}
  for item in (text .. ","):gmatch("([^,]*),") do
    if item == "" then fail(expr, string.format("empty item in %s '%s'", f.what, text)) end
    local range, step = item:match("^([^/]+)/(.*)$")
    range = range or item
    local lo, hi
    if range == "*" then
      lo, hi = f.min, f.max
      if f.key == "dow" then hi = 6 end
    else
      local a, b = range:match("^([^-]+)-([^-]+)$")
      if a then
        lo, hi = value(expr, f, a), value(expr, f, b)
        if lo > hi then fail(expr, string.format("%s range %s goes backwards", f.what, range)) end
      else
        lo = value(expr, f, range)
        hi = step and (f.key == "dow" and 6 or f.max) or lo -- `a/n` runs to the field's end
      end
    end
    local n = 1
    if step then
      n = step:match("^%d+$") and math.tointeger(tonumber(step))
      if not n or n < 1 then
        fail(expr, string.format("%s step '%s' is not a whole number >= 1", f.what, step))
      end
    end
    for v = lo, hi, n do set[(f.key == "dow" and v == 7) and 0 or v] = true end
  end
  return set
end

local Cron = {}
Cron.__index = Cron

function M.parse(expr)
  if type(expr) ~= "string" then fail(tostring(expr), "not a string") end
  local src = expr:match("^%s*(.-)%s*$")
  if src:sub(1, 1) == "@" then
    local m = M.MACROS[src:lower()]
    if not m then
      fail(expr, src .. " is not a known macro (@yearly, @monthly, @weekly, @daily, @hourly; @reboot is not scheduled)")
    end
    src = m
  end
  local parts = {}
  for p in src:gmatch("%S+") do parts[#parts + 1] = p end
  if #parts ~= 5 then
    fail(expr, string.format("expected 5 fields, got %d", #parts))
  end
  local self = setmetatable({expr = expr}, Cron)
  for i, f in ipairs(FIELDS) do self[f.key] = parse_field(expr, f, parts[i]) end
  -- Vixie cron: the OR rule applies only when neither day field starts with `*`
  self.dom_star = parts[3]:sub(1, 1) == "*"
  self.dow_star = parts[5]:sub(1, 1) == "*"
  -- an expression that can never fire (`0 0 30 2 *`) is a mistake: say so now, not never
  if not self:next(M.epoch(2000, 1, 1) - 60) then
    fail(expr, "it never fires (no such date)")
  end
  return self
end

-- ---- matching and searching ------------------------------------------------------------

function Cron:day_matches(d, wday)
  local a, b = self.dom[d] == true, self.dow[wday] == true
  if self.dom_star or self.dow_star then return a and b end
  return a or b
end

function Cron:matches(t)
  local f = M.fields(t)
  return self.minute[f.min] == true and self.hour[f.hour] == true and self.month[f.month] == true
     and self:day_matches(f.day, f.wday)
end

-- 28 years: the calendar's full cycle of weekdays and leap days (a `29 2 mon` that must be a
-- Monday too can be that far apart).
local HORIZON = 28 * 366 * 86400

-- The first fire time strictly after `after` (epoch seconds), or nil if none within 28 years.
function Cron:next(after)
  local t = (math.floor(after) // 60) * 60 + 60
  local limit = after + HORIZON
  while t <= limit do
    local days = t // 86400
    local y, m, d = M.civil_from_days(days)
    local secs = t - days * 86400
    if not self.month[m] then
      t = (m == 12 and M.days_from_civil(y + 1, 1, 1) or M.days_from_civil(y, m + 1, 1)) * 86400
    elseif not self:day_matches(d, (days + 4) % 7) then
      t = (days + 1) * 86400
    elseif not self.hour[secs // 3600] then
      t = days * 86400 + (secs // 3600 + 1) * 3600
    elseif not self.minute[secs % 3600 // 60] then
      t = t + 60
    else
      return t
    end
  end
  return nil
end

-- The latest fire time at or before `at`, or nil if none within 28 years.
function Cron:prev(at)
  local t = (math.floor(at) // 60) * 60
  local limit = at - HORIZON
  while t >= limit do
    local days = t // 86400
    local y, m, d = M.civil_from_days(days)
    local secs = t - days * 86400
    if not self.month[m] then
      t = M.days_from_civil(y, m, 1) * 86400 - 60 -- the last minute of the month before
    elseif not self:day_matches(d, (days + 4) % 7) then
      t = days * 86400 - 60
    elseif not self.hour[secs // 3600] then
      t = days * 86400 + (secs // 3600) * 3600 - 60
    elseif not self.minute[secs % 3600 // 60] then
      t = t - 60
    else
      return t
    end
  end
  return nil
end

-- The next `n` fire times after `after`.
function Cron:upcoming(after, n)
  local out = {}
  local t = after
  for _ = 1, n do
    t = self:next(t)
    if not t then break end
    out[#out + 1] = t
  end
  return out
end

-- ISO 8601 UTC of an epoch ("2024-01-21T02:00:00Z"), without the host's time module.
function M.iso(t)
  local f = M.fields(t)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02dZ", f.year, f.month, f.day, f.hour, f.min, f.sec)
end

return M
