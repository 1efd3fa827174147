-- Print the scheduled jobs' Prometheus metrics (last success, duration, bytes, verification)
--
-- clubio-dr metrics                  the text exposition format on stdout, from the run records
-- clubio-dr metrics --write [DIR]    also write DIR/clubio_dr.prom atomically (default
--                                    CLUBIO_DR_TEXTFILE_DIR), for node-exporter's textfile collector
local clubio, time = require "clubio", require "time"
local S, metrics = require "clubio.schedule", require "clubio.metrics"

local write, dir = false, nil
local args = {...}
local i = 1
while i <= #args do
  local a = args[i]
  if a == "--write" then
    write = true
    if args[i + 1] and args[i + 1]:sub(1, 1) ~= "-" then dir = args[i + 1]; i = i + 1 end
  elseif a == "--help" or a == "-h" then
    io.stdout:write("usage: clubio-dr metrics [--write [DIR]]\n\n",
                    "Prints Prometheus metrics computed from the scheduler's run records\n",
                    "(CLUBIO_DR_STATE_DIR/runs.jsonl); --write also writes DIR/clubio_dr.prom\n",
                    "(DIR defaults to CLUBIO_DR_TEXTFILE_DIR) via a temporary file and rename.\n")
    return 0
  else
    clubio.fail{message = "metrics: unexpected argument '" .. a .. "'", class = "usage",
                hint = "clubio-dr metrics [--write [DIR]]"}
  end
  i = i + 1
end

local runs = S.read_runs()
io.stdout:write(metrics.render(runs, time.now()))
if write then
  local path = metrics.write_textfile(runs, dir)
  io.stderr:write("wrote ", path, "\n")
end
return 0
