-- Print the scheduled jobs' Prometheus metrics (last success, duration, bytes, verification)
--
-- clubio-dr metrics                  the text exposition format on stdout, from the run records
-- clubio-dr metrics --write [DIR]    also write DIR/clubio_dr.prom atomically (default
--                                    CLUBIO_DR_TEXTFILE_DIR), for node-exporter's textfile collector
--
-- The metrics are computed from the scheduler's run records (CLUBIO_DR_STATE_DIR/runs.jsonl).
local clubio, time = require "clubio", require "time"
local S, metrics = require "clubio.schedule", require "clubio.metrics"

local args = require("clubio.args").parse(arg, {options = {["--write"] = true}, max = 1, usage = "[--write [DIR]]"})
local write, dir = args["--write"], args[1]
if dir and not write then
  clubio.fail{message = "metrics: unexpected argument '" .. dir .. "'", class = "usage",
              hint = "clubio-dr metrics [--write [DIR]]: a folder is given with --write"}
end

local runs = S.read_runs()
io.stdout:write(metrics.render(runs, time.now()))
if write then
  local path = metrics.write_textfile(runs, dir)
  io.stderr:write("wrote ", path, "\n")
end
return 0
