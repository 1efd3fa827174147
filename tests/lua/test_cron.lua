-- clubio.cron: next/previous fire times against known calendar dates (month ends, Sundays, the
-- 1st, Feb 29 across leap and century years, the Vixie day-of-month OR day-of-week rule), macros,
-- and the errors a typo gets.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local cron = require "clubio.cron"
local time = require "time"

local function t(s) return assert(time.parse(s)) end
local function nxt(expr, after) return cron.iso(cron.parse(expr):next(t(after))) end
local function prv(expr, at) return cron.iso(cron.parse(expr):prev(t(at))) end

T.case("civil dates round-trip against the host's time module", function()
  for d = -800, 80000, 37 do
    local y, m, dd = cron.civil_from_days(d)
    T.eq(cron.days_from_civil(y, m, dd), d)
    T.eq(cron.iso(d * 86400), time.iso(d * 86400))
  end
  T.eq(cron.fields(t("2024-01-21T02:00:00Z")).wday, 0, "2024-01-21 is a Sunday")
end)

T.case("daily 02:00: strictly after, same day and next day", function()
  T.eq(nxt("0 2 * * *", "2024-01-15T10:30:00Z"), "2024-01-16T02:00:00Z")
  T.eq(nxt("0 2 * * *", "2024-01-16T01:59:59Z"), "2024-01-16T02:00:00Z")
  T.eq(nxt("0 2 * * *", "2024-01-16T02:00:00Z"), "2024-01-17T02:00:00Z")
  T.eq(nxt("0 2 * * *", "2024-12-31T02:00:00Z"), "2025-01-01T02:00:00Z")
  T.eq(nxt("0 6 * * *", "2024-01-16T02:00:00Z"), "2024-01-16T06:00:00Z")
end)

T.case("weekly on Sunday: 0, 7 and sun are the same day", function()
  for _, e in ipairs{"0 2 * * 0", "0 2 * * 7", "0 2 * * sun", "0 2 * * SUN"} do
    T.eq(nxt(e, "2024-01-15T10:30:00Z"), "2024-01-21T02:00:00Z", e)
    T.eq(nxt(e, "2024-01-21T02:00:00Z"), "2024-01-28T02:00:00Z", e)
  end
  T.eq(nxt("0 2 * * 0", "2024-02-26T00:00:00Z"), "2024-03-03T02:00:00Z", "across Feb 29")
end)

T.case("the 1st of the month, and month ends", function()
  T.eq(nxt("0 2 1 * *", "2024-01-31T03:00:00Z"), "2024-02-01T02:00:00Z")
  T.eq(nxt("0 2 1 * *", "2024-12-15T00:00:00Z"), "2025-01-01T02:00:00Z")
  T.eq(nxt("0 0 31 * *", "2024-01-31T00:00:00Z"), "2024-03-31T00:00:00Z", "no Feb 31")
  T.eq(nxt("0 0 31 * *", "2024-03-31T00:00:00Z"), "2024-05-31T00:00:00Z", "no Apr 31")
  T.eq(nxt("0 0 30 * *", "2023-01-30T00:00:00Z"), "2023-03-30T00:00:00Z")
  T.eq(nxt("59 23 28-31 * *", "2023-02-28T23:59:00Z"), "2023-03-28T23:59:00Z")
end)

T.case("Feb 29: leap years, and 2100 is not one", function()
  T.eq(nxt("0 0 29 2 *", "2023-01-01T00:00:00Z"), "2024-02-29T00:00:00Z")
  T.eq(nxt("0 0 29 2 *", "2024-03-01T00:00:00Z"), "2028-02-29T00:00:00Z")
  T.eq(nxt("0 0 29 2 *", "2096-03-01T00:00:00Z"), "2104-02-29T00:00:00Z")
  T.eq(nxt("0 0 29 2 *", "1999-03-01T00:00:00Z"), "2000-02-29T00:00:00Z", "2000 is a leap year")
  T.eq(nxt("0 0 * 2 *", "2024-02-28T12:00:00Z"), "2024-02-29T00:00:00Z")
  T.eq(nxt("0 0 * 2 *", "2023-02-28T12:00:00Z"), "2024-02-01T00:00:00Z")
  T.eq(prv("0 0 29 2 *", "2027-06-01T00:00:00Z"), "2024-02-29T00:00:00Z")
end)

T.case("day of month OR day of week when both are restricted (Vixie)", function()
  T.eq(nxt("0 0 1 * mon", "2024-01-01T00:00:00Z"), "2024-01-08T00:00:00Z", "next Monday")
  T.eq(nxt("0 0 1 * mon", "2024-01-29T00:00:00Z"), "2024-02-01T00:00:00Z", "the 1st, a Thursday")
  T.eq(nxt("0 0 1 * mon", "2024-02-01T00:00:00Z"), "2024-02-05T00:00:00Z")
  T.eq(nxt("0 0 13 * fri", "2024-01-01T00:00:00Z"), "2024-01-05T00:00:00Z", "any Friday")
  T.eq(nxt("0 0 13 * fri", "2024-01-12T00:00:00Z"), "2024-01-13T00:00:00Z", "or the 13th")
  -- a field starting with * means AND: odd days that are Mondays
  T.eq(nxt("0 0 */2 * mon", "2024-01-01T00:00:00Z"), "2024-01-15T00:00:00Z")
  T.eq(nxt("0 0 1 * *", "2024-01-01T00:00:00Z"), "2024-02-01T00:00:00Z")
  T.eq(nxt("0 0 * * mon", "2024-01-01T00:00:00Z"), "2024-01-08T00:00:00Z")
end)

T.case("ranges, steps, lists and names", function()
  T.eq(nxt("0 3 1 1,4,7,10 *", "2024-02-10T00:00:00Z"), "2024-04-01T03:00:00Z", "quarterly")
  T.eq(nxt("*/15 9-17/4 * * 1-5", "2024-01-05T17:50:00Z"), "2024-01-08T09:00:00Z", "Friday evening -> Monday")
  T.eq(nxt("*/15 9-17/4 * * 1-5", "2024-01-08T09:00:00Z"), "2024-01-08T09:15:00Z")
  T.eq(nxt("*/15 9-17/4 * * 1-5", "2024-01-08T09:45:00Z"), "2024-01-08T13:00:00Z")
  T.eq(nxt("5/20 * * * *", "2024-01-08T09:45:00Z"), "2024-01-08T10:05:00Z", "a/n runs to the end")
  T.eq(nxt("5/20 * * * *", "2024-01-08T10:05:00Z"), "2024-01-08T10:25:00Z")
  T.eq(nxt("0 0 1 jan-mar *", "2024-03-02T00:00:00Z"), "2025-01-01T00:00:00Z")
  T.eq(nxt("30 4 * * sat,Sun", "2024-01-15T00:00:00Z"), "2024-01-20T04:30:00Z")
  T.eq(nxt("0 0 * * 5-7", "2024-01-15T00:00:00Z"), "2024-01-19T00:00:00Z", "5-7 is Fri..Sun")
  T.eq(nxt("* * * * *", "2024-01-15T00:00:30Z"), "2024-01-15T00:01:00Z")
end)

T.case("macros", function()
  T.eq(nxt("@daily", "2024-01-15T10:30:00Z"), "2024-01-16T00:00:00Z")
  T.eq(nxt("@midnight", "2024-01-15T10:30:00Z"), "2024-01-16T00:00:00Z")
  T.eq(nxt("@weekly", "2024-01-15T10:30:00Z"), "2024-01-21T00:00:00Z")
  T.eq(nxt("@monthly", "2024-01-15T10:30:00Z"), "2024-02-01T00:00:00Z")
  T.eq(nxt("@yearly", "2024-01-15T10:30:00Z"), "2025-01-01T00:00:00Z")
  T.eq(nxt("@annually", "2024-01-15T10:30:00Z"), "2025-01-01T00:00:00Z")
  T.eq(nxt("@hourly", "2024-01-15T10:30:00Z"), "2024-01-15T11:00:00Z")
end)

T.case("previous fire time (at or before)", function()
  T.eq(prv("0 2 * * *", "2024-01-16T01:00:00Z"), "2024-01-15T02:00:00Z")
  T.eq(prv("0 2 * * *", "2024-01-16T02:00:00Z"), "2024-01-16T02:00:00Z")
  T.eq(prv("0 2 * * *", "2024-01-16T02:00:59Z"), "2024-01-16T02:00:00Z")
  T.eq(prv("0 2 1 * *", "2024-03-01T01:00:00Z"), "2024-02-01T02:00:00Z")
  T.eq(prv("0 2 * * 0", "2024-01-20T23:59:00Z"), "2024-01-14T02:00:00Z")
  T.eq(prv("0 0 31 * *", "2024-05-30T00:00:00Z"), "2024-03-31T00:00:00Z")
  T.eq(prv("*/15 9-17/4 * * 1-5", "2024-01-08T08:59:00Z"), "2024-01-05T17:45:00Z")
  local c = cron.parse("0 2 * * *")
  T.ok(c:matches(t("2024-01-16T02:00:00Z")))
  T.ok(not c:matches(t("2024-01-16T02:01:00Z")))
  local up = c:upcoming(t("2024-02-27T12:00:00Z"), 3)
  T.eq(cron.iso(up[3]), "2024-03-01T02:00:00Z")
end)

T.case("bad expressions: one line naming the problem, class usage", function()
  local cases = {
    {"61 * * * *", "minute 61 is out of range 0%-59"},
    {"* * * *", "expected 5 fields, got 4"},
    {"* * * * * *", "expected 5 fields, got 6"},
    {"5-1 * * * *", "minute range 5%-1 goes backwards"},
    {"*/0 * * * *", "step '0'"},
    {"0 0 * * foo", "day of week 'foo' is not a number or a name"},
    {"0 0 1 13 *", "month 13 is out of range"},
    {"0 0 0 * *", "day of month 0 is out of range 1%-31"},
    {"0 0 30 2 *", "never fires"},
    {"@reboot", "not a known macro"},
    {"0 2 L * *", "day of month 'L'"},
    {"0,,5 2 * * *", "empty item"},
    {"1.5 * * * *", "minute '1.5' is not a number"},
  }
  for _, c in ipairs(cases) do
    local e = T.raises(cron.parse, c[1])
    T.match(tostring(e), c[2], c[1])
    T.match(tostring(e), "^invalid cron expression '", c[1])
    T.eq(e.class, "usage", c[1])
  end
end)

return T.finish()
