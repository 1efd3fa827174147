-- A stand-in for the application during a failover: inserts rows into `events` on WRITER_URL
-- as fast as it can (one transaction each), appending the id of every committed row to
-- WRITER_LOG, reconnecting when the server ends its session, until WRITER_STOP exists.
-- Failed attempts are counted on stderr ("failed N: ...") so the test sees it kept writing.
local pgdump, time = require "pgdump", require "time"
local url, logp, stop = os.getenv("WRITER_URL"), os.getenv("WRITER_LOG"), os.getenv("WRITER_STOP")
local out = assert(io.open(logp, "a"))
out:setvbuf("line")
local function stopped()
  local f = io.open(stop, "r")
  if f then f:close() return true end
  return false
end
local conn, seq, failed = nil, 0, 0
while not stopped() do
  if not conn then
    local ok, c = pcall(pgdump.connect, url)
    if ok then conn = c else failed = failed + 1; time.sleep(0.05) end
  end
  if conn then
    seq = seq + 1
    local ok, rows = pcall(conn.query, conn, "INSERT INTO events (writer, seq) VALUES (1, $1) RETURNING id", {seq})
    if ok then
      out:write(rows[1].id, "\n")
    else
      failed = failed + 1
      io.stderr:write("failed ", failed, ": ", tostring(type(rows) == "table" and rows.message or rows), "\n")
      pcall(conn.close, conn)
      conn = nil
      time.sleep(0.02)
    end
  end
  time.sleep(0.002)
end
out:close()
return 0
