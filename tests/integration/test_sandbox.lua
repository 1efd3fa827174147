-- The sandbox as the scripts see it, and the child-process endpoints against a real psql:
-- bytes stream from a child's stdout into a sink and from a source into a child's stdin, with
-- the password passed through the environment (never argv).
package.path = os.getenv("CLUBIO_DR_TEST_DIR") .. "/lua/?.lua;" .. package.path
local T = require "testing"
local pipe = require "pipe"
local env = require "env"

local function pg_env()
  return {PGHOST = "127.0.0.1", PGPORT = env.get("SANDBOX_PG_PORT"), PGUSER = "app",
          PGDATABASE = "clubio", PGPASSWORD = env.get("SANDBOX_PG_APP_PW")}
end

T.case("the sandbox environment is complete", function()
  for _, k in ipairs{"DATABASE_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "BACKUP_S3_BUCKET", "BACKUP_ENCRYPTION_KEY"} do
    T.ok(#env.get(k) > 0, k)
  end
  T.match(env.get("DATABASE_URL"), "^postgresql://app:.+@127%.0%.0%.1:%d+/clubio$")
end)

T.case("SQL streams into psql's stdin and its output streams back", function()
  local sql = "CREATE TABLE IF NOT EXISTS smoke(id int primary key, v text);\n" ..
              "TRUNCATE smoke;\nINSERT INTO smoke SELECT g, 'row ' || g FROM generate_series(1, 5000) g;\n"
  local r = pipe.run{pipe.string(sql),
                     pipe.command_sink{argv = {"psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"}, env = pg_env(),
                                       quiet = true}}
  T.eq(r.bytes_in, #sql)
  r = pipe.run{pipe.command{argv = {"psql", "-X", "-At", "-c", "COPY smoke TO STDOUT"}, env = pg_env()},
               pipe.count{label = "copied"}, pipe.buffer{limit = 1 << 20}}
  T.eq(r.copied.bytes, r.bytes_out)
  T.eq(#r.buffer.data, r.bytes_out)
  T.match(r.buffer.data, "^1\trow 1\n2\trow 2\n")
  local lines = 0
  for _ in r.buffer.data:gmatch("\n") do lines = lines + 1 end
  T.eq(lines, 5000)
end)

T.case("a failing child is an error naming it, and its stderr carries no password", function()
  local e = pg_env()
  e.PGPASSWORD = "wrong-" .. e.PGPASSWORD
  local err = T.raises(pipe.run, {pipe.command{argv = {"psql", "-X", "-c", "select 1"}, env = e},
                                  pipe.buffer{}})
  T.match(tostring(err), "psql")
  T.no_match(tostring(err), e.PGPASSWORD)
end)

return T.finish()
