-- clubio.retention: GFS decisions over a synthetic calendar of 400 days of daily backups —
-- exactly which survive — plus the safety rules (newest verified backup, unverified
-- representatives) and policy checking.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local retention = require "clubio.retention"
local cron = require "clubio.cron"

local DAY = 86400
local function day(y, m, d) return cron.epoch(y, m, d) end
local function ymd(t) return cron.iso(t):sub(1, 10) end

-- 400 daily backups at 02:00 from Sunday 2023-01-01 to 2024-02-04; now 2024-02-04T03:00Z.
local START = day(2023, 1, 1) + 2 * 3600
local NOW = day(2024, 2, 4) + 3 * 3600
local function calendar(n, verified)
  local out = {}
  for i = 0, n - 1 do
    local t = START + i * DAY
    out[#out + 1] = {name = "backup-" .. ymd(t):gsub("-", ""), time = t, verified = verified == nil or verified(t)}
  end
  return out
end

local function kept(decisions)
  local out = {}
  for _, d in ipairs(decisions) do if d.keep then out[#out + 1] = ymd(d.backup.time) end end
  table.sort(out)
  return out
end

local function expect_set(got, want)
  table.sort(want)
  T.eq(table.concat(got, " "), table.concat(want, " "))
end

-- the daily window: 2024-01-06 .. 2024-02-04 (30 backups; 2024-01-05 is 30 days 1 hour old)
local DAILY = {}
for i = 0, 29 do DAILY[#DAILY + 1] = ymd(day(2024, 1, 6) + i * DAY) end
-- Sundays younger than 90 days (cutoff 2023-11-06T03:00) before the daily window
local WEEKLY = {"2023-11-12", "2023-11-19", "2023-11-26", "2023-12-03", "2023-12-10", "2023-12-17",
                "2023-12-24", "2023-12-31"}
-- firsts of the month younger than 365 days (cutoff 2023-02-04T03:00) before the daily window
local MONTHLY = {"2023-03-01", "2023-04-01", "2023-05-01", "2023-06-01", "2023-07-01", "2023-08-01",
                 "2023-09-01", "2023-10-01", "2023-11-01", "2023-12-01", "2024-01-01"}

local function union(...)
  local out = {}
  for _, l in ipairs{...} do for _, v in ipairs(l) do out[#out + 1] = v end end
  return out
end

T.case("400 days of daily backups: exactly 30 daily + 8 weekly + 11 monthly survive", function()
  local ds = retention.decide(calendar(400), NOW)
  T.eq(#ds, 400)
  expect_set(kept(ds), union(DAILY, WEEKLY, MONTHLY))
  local s = retention.summary(ds)
  T.eq(s.keep, 49)
  T.eq(s.delete, 351)
  T.eq(s.daily, 24, "the daily window minus the 1st (monthly) and its 5 Sundays (weekly)")
  T.eq(s.weekly, 13)
  T.eq(s.monthly, 12)
  -- newest first, with reasons
  T.eq(ds[1].backup.name, "backup-20240204")
  T.ok(ds[1].newest_verified)
  local by = {}
  for _, d in ipairs(ds) do by[ymd(d.backup.time)] = d end
  T.eq(by["2024-01-20"].tier, "daily")
  T.match(by["2024-01-20"].reason, "^daily: daily backup, 15d old %(kept 30 days, until 2024%-02%-19%)$")
  T.eq(by["2023-12-10"].tier, "weekly")
  T.match(by["2023-12-10"].reason, "weekly backup of the week of 2023%-12%-10")
  T.eq(by["2023-06-01"].tier, "monthly")
  T.match(by["2023-06-01"].reason, "until 2024%-05%-31")
  T.eq(by["2024-02-01"].tier, "monthly", "a 1st inside the daily window is kept as monthly (longest)")
  T.eq(by["2023-12-31"].tier, "weekly")
  T.ok(not by["2023-12-11"].keep)
  T.match(by["2023-12-11"].reason, "^expired: 55d old; daily backup older than 30 days; not the week's first backup %(2023%-12%-10 is%); not the month's first backup %(2023%-12%-01 is%)$")
  T.ok(not by["2023-11-05"].keep, "a Sunday older than 90 days")
  T.ok(not by["2023-02-01"].keep, "a 1st older than 365 days")
  T.ok(not by["2023-01-01"].keep)
end)

T.case("input order does not matter", function()
  local cal = calendar(400)
  local rev = {}
  for i = #cal, 1, -1 do rev[#rev + 1] = cal[i] end
  expect_set(kept(retention.decide(rev, NOW)), union(DAILY, WEEKLY, MONTHLY))
end)

T.case("an unverified Sunday: the week keeps its oldest verified backup instead", function()
  local ds = retention.decide(calendar(400, function(t) return ymd(t) ~= "2023-12-10" and ymd(t) ~= "2023-06-01" end), NOW)
  local want = union(DAILY, WEEKLY, MONTHLY)
  for i, v in ipairs(want) do
    if v == "2023-12-10" then want[i] = "2023-12-11" end
    if v == "2023-06-01" then want[i] = "2023-06-02" end
  end
  expect_set(kept(ds), want)
end)

T.case("the newest verified backup is never deleted", function()
  -- backups stopped 200 days ago, and the last 20 of them were never verified
  local cal = calendar(200, function(t) return t < START + 180 * DAY end)
  local ds = retention.decide(cal, NOW, {daily = 30, weekly = 0, monthly = 0})
  expect_set(kept(ds), {ymd(START + 179 * DAY)})
  local d
  for _, x in ipairs(ds) do if x.keep then d = x end end
  T.eq(d.tier, "newest")
  T.match(d.reason, "^newest verified backup: never deleted")
  -- none verified at all: the newest is kept
  ds = retention.decide(calendar(10, function() return false end), NOW, {daily = 1, weekly = 0, monthly = 0})
  expect_set(kept(ds), {ymd(START + 9 * DAY)})
  T.match(ds[1].reason, "none is verified")
  T.eq(#retention.decide({}, NOW), 0)
end)

T.case("configurable tiers and week start", function()
  local ds = retention.decide(calendar(400), NOW, {daily = 7, weekly = 28, monthly = 0})
  -- 7 dailies (2024-01-29..02-04) + Sundays younger than 28 days (01-07 02:00 is 28d1h old)
  expect_set(kept(ds), {"2024-01-14", "2024-01-21", "2024-01-28", "2024-01-29", "2024-01-30",
                        "2024-01-31", "2024-02-01", "2024-02-02", "2024-02-03", "2024-02-04"})
  ds = retention.decide(calendar(400), NOW, {daily = 1, weekly = 15, monthly = 0, week_start = 1})
  expect_set(kept(ds), {"2024-01-22", "2024-01-29", "2024-02-04"}) -- Mondays, and today
end)

T.case("several backups a day (exports): the daily window keeps all of them", function()
  local b = {}
  for i = 0, 3 do b[#b + 1] = {time = NOW - 3600 * (6 * i + 1), verified = true} end
  local ds = retention.decide(b, NOW)
  T.eq(retention.summary(ds).keep, 4)
end)

T.case("policy checks", function()
  T.match(tostring(T.raises(retention.policy, {dayly = 3})), "unknown retention policy key 'dayly'")
  T.match(tostring(T.raises(retention.policy, {daily = -1})), "daily must be a whole number >= 0")
  T.match(tostring(T.raises(retention.policy, {daily = 1.5})), "daily must be a whole number")
  T.match(tostring(T.raises(retention.policy, {daily = 0, weekly = 0, monthly = 0})), "every tier at 0")
  T.match(tostring(T.raises(retention.decide, {{}}, NOW)), "backup 1 has no time")
  T.eq(retention.policy{}.monthly, 365)
end)

return T.finish()
