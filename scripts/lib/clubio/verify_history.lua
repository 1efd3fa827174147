-- The verification history, part of the `verify` module (added to its table by verify_ext.lua):
-- every verification — archive, restore test, freshness, the runbook's queries when asked —
-- appends one JSON record, the evidence an auditor asks for: what was checked, the target (no
-- secrets), when, the result and its reason, durations, the tool's version and the host.
--
--   verify.record({what = "restore_test", target = {...}, ok = true, seconds = {...}}, opts)
--   verify.history{limit = 10}                      -- newest first, from the local file
--   verify.history{s3 = {bucket = B, prefix = "verification-history/"}, what = "restore_test"}
--
-- Local: JSON lines in CLUBIO_DR_VERIFY_HISTORY ("off" disables), else verify-history.jsonl in
-- the job journal's folder (the folder of CLUBIO_DR_JOURNAL, else $XDG_STATE_HOME/clubio-dr, else
-- ~/.local/state/clubio-dr); with CLUBIO_DR_JOURNAL=off and no CLUBIO_DR_VERIFY_HISTORY there is
-- no local history. Each record is one write(2) on an O_APPEND file, so concurrent writers on
-- one machine interleave whole lines.
-- S3 (optional): history_s3 = {bucket, prefix = "verification-history/", client}, or
-- CLUBIO_DR_VERIFY_HISTORY_S3=s3://bucket/prefix/: one object per record,
-- <prefix>YYYY/MM/DD/<YYYYMMDDTHHMMSSmmmZ>-<what>-<random>.json, so writers never clobber each
-- other and keys sort by time.
return function(M)
  local cjson = require "cjson"

  M.HISTORY_S3_PREFIX = "verification-history/"

  local function getenv(name)
    local v = os.getenv(name)
    if v == "" then return nil end
    return v
  end

  -- The local history file for opts (nil when disabled).
  function M.history_path(opts)
    opts = opts or {}
    if opts.history == false or opts.history_file == false then return nil end
    if opts.history_file then return opts.history_file end
    local p = getenv("CLUBIO_DR_VERIFY_HISTORY")
    if p == "off" then return nil end
    if p then return p end
    local j = getenv("CLUBIO_DR_JOURNAL")
    if j == "off" then return nil end
    if j then return (j:match("^(.*)/[^/]*$") or ".") .. "/verify-history.jsonl" end
    local base = getenv("XDG_STATE_HOME")
    if not base then
      local home = getenv("HOME")
      if not home then return nil end
      base = home .. "/.local/state"
    end
    return base .. "/clubio-dr/verify-history.jsonl"
  end

  -- The S3 history for opts: {bucket, prefix, client} or nil.
  function M.history_s3(opts)
    opts = opts or {}
    if opts.history == false or opts.history_s3 == false then return nil end
    local h = opts.history_s3
    if h == nil then
      local u = getenv("CLUBIO_DR_VERIFY_HISTORY_S3")
      if not u or u == "off" then return nil end
      local b, p = u:match("^s3://([^/]+)/?(.*)$")
      if not b then
        require("clubio").fail{message = "CLUBIO_DR_VERIFY_HISTORY_S3 is not an s3://bucket/prefix/ address",
                               class = "config", code = "config.env", hint = "e.g. s3://clubio-backups/verification-history/"}
      end
      h = {bucket = b, prefix = p}
    end
    if type(h) ~= "table" or type(h.bucket) ~= "string" then
      require("clubio").fail{message = "history_s3 needs {bucket = ..., prefix = ...}", class = "usage", code = "usage.option"}
    end
    local prefix = h.prefix
    if prefix == nil or prefix == "" then prefix = M.HISTORY_S3_PREFIX end
    if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
    return {bucket = h.bucket, prefix = prefix, client = h.client}
  end

  local rand_hex = require("crypto").random_hex
  M._rand_hex = rand_hex

  local function append_line(path, line)
    local ok, err = pcall(M.append_line, path, line) -- one write(2): see modules/verify/history.h
    if not ok then return nil, tostring(err) end
    return true
  end

  -- Appends a record (see the banner for its fields) to the local and S3 histories opts
  -- selects. Never raises for an unwritable history: the verification's result matters more;
  -- the record comes back with `history_error` and a warning is logged.
  function M.record(rec, opts)
    opts = opts or {}
    local log, time, clubio = require "log", require "time", require "clubio"
    local path, s3h = M.history_path(opts), M.history_s3(opts)
    if not path and not s3h then return rec end
    local now = time.now()
    rec.at = rec.at or time.iso(now)
    rec.tool = rec.tool or {name = "clubio-dr", version = clubio.version}
    rec.host = rec.host or clubio.hostname()
    if rec.ok == nil then rec.ok = false end
    local ok, text = pcall(cjson.encode, rec)
    if not ok then
      log.warn("verification history: cannot encode the record: " .. tostring(text))
      return rec
    end
    text = log.redact(text) -- belt and braces: targets never hold secrets, URLs are redacted anyway
    local errors = {}
    if path then
      local wrote, why = append_line(path, text .. "\n")
      if not wrote then errors[#errors + 1] = why end
    end
    if s3h then
      local ms = math.floor((now % 1) * 1000)
      local key = string.format("%s%s/%s%03dZ-%s-%s.json", s3h.prefix, time.format(now, "%Y/%m/%d"),
                                time.format(now, "%Y%m%dT%H%M%S"), ms,
                                tostring(rec.what):gsub("[^%w_.-]", "_"), rand_hex(4))
      local put_ok, err = pcall(function()
        local c = s3h.client or require("clubio.objects").client()
        c:put(s3h.bucket, key, {body = text, content_type = "application/json"})
      end)
      if put_ok then rec.history_key = "s3://" .. s3h.bucket .. "/" .. key
      else errors[#errors + 1] = "s3://" .. s3h.bucket .. "/" .. key .. ": " .. tostring(err) end
    end
    if #errors > 0 then
      rec.history_error = table.concat(errors, "; ")
      log.warn("verification history not written: " .. rec.history_error)
    end
    rec.history_file = path
    return rec
  end

  -- verify.history{file =, s3 = {bucket, prefix, client} | true, limit = 20, what =}
  -- The latest `limit` records (newest first), from the local file (default: the one
  -- verify.record writes) or, with `s3`, from the S3 history. Malformed lines are skipped.
  function M.history(opts)
    opts = opts or {}
    M._check_options(opts, "verify.history", {file = 1, s3 = 1, limit = 1, what = 1})
    local limit = opts.limit or 20
    local out = {}
    if opts.s3 then
      local h = M.history_s3({history_s3 = opts.s3 ~= true and opts.s3 or nil})
      if not h then
        require("clubio").fail{message = "verify.history: no S3 history configured", class = "usage", code = "usage.option",
                               hint = "pass s3 = {bucket = ..., prefix = ...} or set CLUBIO_DR_VERIFY_HISTORY_S3"}
      end
      local c = h.client or require("clubio.objects").client()
      local keys = {}
      for o in c:list{bucket = h.bucket, prefix = h.prefix} do
        if o.key:match("%.json$") and (not opts.what or o.key:find("-" .. opts.what .. "-", 1, true)) then
          keys[#keys + 1] = o.key
        end
      end
      table.sort(keys, function(a, b) return a > b end)
      for i = 1, math.min(limit, #keys) do
        local ok, rec = pcall(cjson.decode, c:get(h.bucket, keys[i]))
        if ok and type(rec) == "table" then rec.history_key = "s3://" .. h.bucket .. "/" .. keys[i]; out[#out + 1] = rec end
      end
      return out
    end
    local path = opts.file or M.history_path({})
    if not path then return out end
    local f = io.open(path, "r")
    if not f then return out end
    local ring, n = {}, 0
    for line in f:lines() do
      local ok, rec = pcall(cjson.decode, line)
      if ok and type(rec) == "table" and (not opts.what or rec.what == opts.what) then
        n = n + 1
        ring[(n - 1) % limit + 1] = rec
      end
    end
    f:close()
    for i = n, math.max(1, n - limit + 1), -1 do out[#out + 1] = ring[(i - 1) % limit + 1] end
    return out
  end
end
