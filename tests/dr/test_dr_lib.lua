-- clubio.dr's helpers that need no server: URL parsing, the libpq environment for children, the
-- subscription's connection string (quoting), database swaps, identifiers, site-file edits.
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local dr = require "clubio.dr"

local URL = "postgresql://app%40x:p%27w%5Cd%3Aq@db.example:6543/my%20db?sslmode=require&options=-c%20x%3D1"

T.case("parse_url: percent-decoded parts and parameters", function()
  local u = dr.parse_url(URL)
  T.eq(u.user, "app@x")
  T.eq(u.password, "p'w\\d:q")
  T.eq(u.host, "db.example")
  T.eq(u.port, "6543")
  T.eq(u.database, "my db")
  T.eq(u.params.sslmode, "require")
  T.eq(u.params.options, "-c x=1")
  local v = dr.parse_url("postgres://u@[::1]/d")
  T.eq(v.host, "::1")
  T.eq(v.password, nil)
  local e = T.raises(dr.parse_url, "mysql://x")
  T.match(e.message, "not a postgres:// connection URL")
end)

T.case("libpq_env: the password in PGPASSWORD, parameters mapped", function()
  local e = dr.libpq_env(URL)
  T.eq(e.PGPASSWORD, "p'w\\d:q")
  T.eq(e.PGUSER, "app@x")
  T.eq(e.PGDATABASE, "my db")
  T.eq(e.PGSSLMODE, "require")
  T.eq(e.PGOPTIONS, "-c x=1")
end)

T.case("conninfo: quoted values, quotes and backslashes escaped", function()
  T.eq(dr.conninfo(URL), [[host='db.example' port='6543' dbname='my db' user='app@x' password='p\'w\\d:q' options='-c x=1' sslmode='require']])
  T.eq(dr.literal(dr.conninfo(URL)):sub(1, 20), "'host=''db.example''")
end)

T.case("display hides the password; with_database swaps only the database", function()
  T.eq(dr.display(URL), "app@x@db.example:6543/my db")
  T.no_match(dr.display(URL), "p'w")
  T.eq(dr.with_database("postgresql://a:b@h:1/clubio?sslmode=require", "dr_x"), "postgresql://a:b@h:1/dr_x?sslmode=require")
  T.eq(dr.with_database("postgresql://a:clubio@h:1/clubio", "dr_x"), "postgresql://a:clubio@h:1/dr_x")
end)

T.case("identifiers and qualified names", function()
  T.eq(dr.ident('we"ird'), '"we""ird"')
  T.eq((dr.qualify("orders")), '"public"."orders"')
  T.eq(select(2, dr.qualify("sales.Orders")), "sales.Orders")
end)

T.case("site edits on the provided steps", function()
  local steps = dr.steps()
  T.eq(#steps, 9)
  dr.edit.move_after(steps, "notify", "check-dr-health")
  T.eq(steps[2].name, "notify")
  local e = T.raises(dr.edit.remove, steps, "nope")
  T.match(e.message, "no failover step named 'nope'")
  T.eq(dr.edit.order(steps, {"notify", "measure-lag"})[2].name, "measure-lag")
end)

return T.finish()
