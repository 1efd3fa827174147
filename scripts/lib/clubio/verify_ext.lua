-- The Lua half of the `verify` module: manifests, archive verification without a database,
-- freshness; restore tests, the history and the runbook's queries are in verify_restore.lua,
-- verify_history.lua and verify_queries.lua (same table). The C half (modules/verify) gives the byte-level pieces: a SQL scan
-- that recomputes per-table row counts and digests from a dump stream, and the manifest HMAC.
-- luaopen_verify calls this file's function with the module table to extend it.
--
--   local verify = require "verify"
--   local m = verify.manifest{...}; local text = verify.sign_manifest(m)
--   local r = verify.archive{bucket = b, key = k}      -- r.ok, r.reason, r.table
return function(M)
  local cjson = require "cjson"

  local function lazy(name)
    return setmetatable({}, {__index = function(_, k) return require(name)[k] end})
  end
  local clubio = lazy("clubio")

  M.FORMAT = "clubio-dr-manifest"
  M.FORMAT_VERSION = 1
  M.MANIFEST_SUFFIX = ".manifest.json"

  ---------------------------------------------------------------------------------------------
  -- canonical JSON: object keys sorted, integers without a fraction, no whitespace; the text the
  -- HMAC covers, so that any change to a manifest (or a re-encoding) is detected.
  local function canon(v, out)
    local t = type(v)
    if t == "table" then
      if v == cjson.null then out[#out + 1] = "null"; return end
      local n = #v
      local is_array = n > 0 -- an empty table is written as {}
      if is_array then
        for k in pairs(v) do
          if math.type(k) ~= "integer" or k < 1 or k > n then is_array = false; break end
        end
      end
      if is_array then
        out[#out + 1] = "["
        for i = 1, n do
          if i > 1 then out[#out + 1] = "," end
          canon(v[i], out)
        end
        out[#out + 1] = "]"
      else
        local keys = {}
        for k in pairs(v) do
          if type(k) ~= "string" then error("canonical JSON: object keys must be strings", 0) end
          keys[#keys + 1] = k
        end
        table.sort(keys)
        out[#out + 1] = "{"
        for i, k in ipairs(keys) do
          if i > 1 then out[#out + 1] = "," end
          out[#out + 1] = cjson.encode(k)
          out[#out + 1] = ":"
          canon(v[k], out)
        end
        out[#out + 1] = "}"
      end
    elseif t == "number" then
      if math.type(v) == "integer" or (v == math.floor(v) and math.abs(v) < 2^53) then
        out[#out + 1] = string.format("%d", v)
      else
        out[#out + 1] = string.format("%.17g", v)
      end
    elseif t == "string" or t == "boolean" then
      out[#out + 1] = cjson.encode(v)
    elseif v == nil then
      out[#out + 1] = "null"
    else
      error("canonical JSON: cannot encode a " .. t, 0)
    end
  end

  function M.canonical_json(v)
    local out = {}
    canon(v, out)
    return table.concat(out)
  end

  local random_hex = require("crypto").random_hex

  local function copy_without_hmac(m)
    local c = {}
    for k, v in pairs(m) do c[k] = v end
    if m.auth then
      c.auth = {}
      for k, v in pairs(m.auth) do if k ~= "hmac" then c.auth[k] = v end end
    end
    return c
  end

  -- Adds the authentication block to manifest m and returns the manifest's text (canonical
  -- JSON, HMAC included). opts: passphrase / passphrase_env / passphrase_file, iter.
  -- auth.key_check depends on the passphrase alone (modules/verify/manifest.h), so a check can
  -- tell a wrong passphrase from an altered manifest; the HMAC covers it like every other field.
  function M.sign_manifest(m, opts)
    opts = opts or {}
    local pass = {passphrase = opts.passphrase, passphrase_env = opts.passphrase_env,
                  passphrase_file = opts.passphrase_file}
    m.auth = {alg = "hmac-sha256", kdf = "pbkdf2-hmac-sha256", domain = "clubio-dr/manifest/v1",
              iter = opts.iter or 10000, salt = random_hex(16)}
    local _, check = M.manifest_hmac{salt = m.auth.salt, iter = m.auth.iter, passphrase = pass.passphrase,
                                     passphrase_env = pass.passphrase_env, passphrase_file = pass.passphrase_file}
    m.auth.key_check = check
    local unsigned = M.canonical_json(copy_without_hmac(m))
    m.auth.hmac = M.manifest_hmac{text = unsigned, salt = m.auth.salt, iter = m.auth.iter,
                                  passphrase = pass.passphrase, passphrase_env = pass.passphrase_env,
                                  passphrase_file = pass.passphrase_file}
    return M.canonical_json(m)
  end

  -- Parses and authenticates a manifest's text. Returns the manifest, or nil, a reason and why:
  --   "incomplete"        unreadable, not a manifest, or unsigned;
  --   "wrong-passphrase"  the key check does not match: the passphrase is not this archive's;
  --   "manifest-altered"  the key check matches, the HMAC does not: the text was changed;
  --   "wrong-passphrase-or-altered"  an older manifest without a key check whose HMAC does not
  --                       match: the two cannot be told apart.
  -- (A manifest altered in its key check itself reads as a wrong passphrase; it fails either way.)
  function M.check_manifest(text, opts)
    opts = opts or {}
    local ok, m = pcall(cjson.decode, text)
    if not ok or type(m) ~= "table" or m.format ~= M.FORMAT then
      return nil, "incomplete", "the manifest is not a clubio-dr manifest"
    end
    if type(m.format_version) ~= "number" or m.format_version > M.FORMAT_VERSION then
      return nil, "incomplete", "manifest format version " .. tostring(m.format_version) .. " is newer than this tool"
    end
    local a = m.auth
    if type(a) ~= "table" or type(a.hmac) ~= "string" or type(a.salt) ~= "string" then
      return nil, "incomplete", "the manifest is not signed"
    end
    local want, check = M.manifest_hmac{text = M.canonical_json(copy_without_hmac(m)), salt = a.salt,
                                        iter = a.iter, passphrase = opts.passphrase,
                                        passphrase_env = opts.passphrase_env, passphrase_file = opts.passphrase_file}
    if a.key_check ~= nil then
      if type(a.key_check) ~= "string" or not M.equal(check, a.key_check) then
        return nil, "wrong-passphrase", "the passphrase is not the one this archive was made with (the manifest's key check does not match)"
      end
      if not M.equal(want, a.hmac) then
        return nil, "manifest-altered", "the manifest was changed after the export signed it (the passphrase is right, the HMAC does not match)"
      end
    elseif not M.equal(want, a.hmac) then
      return nil, "wrong-passphrase-or-altered",
             "the manifest's HMAC does not match: a wrong passphrase or an altered manifest (this manifest has no key check, so the two cannot be told apart)"
    end
    return m
  end

  -- What a failed verification result (r.reason, r.message) means for the person running it:
  -- {message, class, code, hint} for clubio.fail. A wrong passphrase is a configuration problem
  -- (exit 3) about the key, not the archive; everything else is a verification failure (exit 4).
  local FAILURE_HINTS = {
    ["wrong-passphrase"] = "check BACKUP_ENCRYPTION_KEY: it is not the passphrase this archive was made with; the archive itself is not in question",
    ["manifest-altered"] = "do not trust this archive: its manifest was changed after the export; use another export and find out who can write to the bucket",
    ["wrong-passphrase-or-altered"] = "check BACKUP_ENCRYPTION_KEY first; if it is right, do not trust this archive (its manifest is too old to tell the two apart)",
  }
  function M.failure(r, default_hint)
    local reason = tostring(r.reason)
    return {message = string.format("%s: %s (%s)", tostring(r.archive or "archive"), reason, tostring(r.message)),
            class = reason == "wrong-passphrase" and "config" or "verify", code = "verify." .. reason,
            hint = FAILURE_HINTS[reason] or default_hint or "do not rely on this archive; run a new export and check the bucket"}
  end

  ---------------------------------------------------------------------------------------------
  -- Compares the per-table figures of a scan (or a restore) with the manifest's. Returns nil
  -- when they agree, else the first table that differs and what differs.
  -- A manifest's `tables` from a dump's per-table results (pgdump.dump{row_digests = true}):
  -- rows, bytes, the ordered sha256, and set_sha256, the rows' order-independent digest, which a
  -- restore compares with the tables it reads back (a parallel restore stores rows in another
  -- order), so that it need not hash them itself.
  function M.manifest_tables(dump_tables)
    local tables = {}
    for name, t in pairs(dump_tables or {}) do
      tables[name] = {rows = t.rows, sha256 = t.sha256, bytes = t.bytes, set_sha256 = t.set_sha256}
    end
    return tables
  end

  function M.compare_tables(want, got)
    local names = {}
    for name in pairs(want or {}) do names[#names + 1] = name end
    for name in pairs(got or {}) do if not (want or {})[name] then names[#names + 1] = name end end
    table.sort(names)
    for _, name in ipairs(names) do
      local w, g = (want or {})[name], (got or {})[name]
      if not w then return name, "table " .. name .. " is in the archive but not in the manifest" end
      if not g then return name, "table " .. name .. " is in the manifest but not in the archive" end
      if w.rows ~= g.rows then
        return name, string.format("table %s: %d rows in the manifest, %d found", name, w.rows, g.rows)
      end
      if w.sha256 and g.sha256 and w.sha256 ~= g.sha256 then
        return name, string.format("table %s: its data digest differs from the manifest's", name)
      end
    end
    return nil
  end

  -- The reason a failed pipe gives for an archive: a decrypt failure is a wrong passphrase (or
  -- a damaged first block), gzip errors are damage, an early end is truncation.
  local function classify(err)
    local code = type(err) == "table" and err.code or ""
    local msg = tostring(err)
    if code:find("passphrase") or code:find("decrypt") or msg:find("wrong passphrase") then
      return "wrong-passphrase"
    end
    if code:find("truncat") or msg:find("truncat") then return "truncated" end
    if code:find("gzip") or code:find("gunzip") or code:find("crc") then return "checksum-mismatch" end
    return "error"
  end
  M._classify = classify

  local function check_options(o, what, allowed)
    if type(o) ~= "table" then
      clubio.fail{message = what .. " needs an options table", class = "usage", code = "usage.option"}
    end
    for k in pairs(o) do
      if not allowed[k] then clubio.fail{message = "unknown option '" .. tostring(k) .. "' for " .. what,
                                         class = "usage", code = "usage.option",
                                         hint = "see modules/verify/README.md for the options"} end
    end
  end
  M._check_options = check_options

  -- Finds an archive and its manifest and authenticates the manifest, without reading the
  -- archive. o: bucket/key or file, manifest (text), client, passphrase options. Returns
  -- {where, size, manifest, source = function() -> pipe source}, or nil and a failure result
  -- {ok = false, reason = "missing" | "incomplete" | "wrong-passphrase" | "manifest-altered" |
  -- "wrong-passphrase-or-altered" | "size-invalid", message}.
  function M.open_archive(o)
    local pipe = require "pipe"
    local where = o.file or ("s3://" .. tostring(o.bucket) .. "/" .. tostring(o.key))
    local function bad(reason, message)
      return nil, {ok = false, reason = reason, message = message, archive = where}
    end
    local text, size, source = o.manifest, nil, nil
    if o.file then
      local f = io.open(o.file, "rb")
      if not f then return bad("missing", "no archive at " .. o.file) end
      size = f:seek("end")
      f:close()
      if not text then
        local mf = io.open(o.file .. M.MANIFEST_SUFFIX, "rb")
        if mf then text = mf:read("a"); mf:close() end
      end
      source = function() return pipe.file(o.file) end
    else
      if not o.bucket or not o.key then
        clubio.fail{message = "give bucket and key, or file, for the archive", class = "usage", code = "usage.option"}
      end
      local c = o.client or require("clubio.objects").client()
      local h = c:head(o.bucket, o.key)
      if not h then return bad("missing", "no archive at " .. where) end
      size = h.size
      if not text then
        local mh = c:head(o.bucket, o.key .. M.MANIFEST_SUFFIX)
        if mh then text = c:get(o.bucket, o.key .. M.MANIFEST_SUFFIX) end
      end
      source = function() return c:download{bucket = o.bucket, key = o.key} end
    end
    if not text then
      return bad("incomplete", "the archive has no manifest (the export did not finish): " .. where)
    end
    local m, reason, why = M.check_manifest(text, {passphrase = o.passphrase, passphrase_env = o.passphrase_env,
                                                   passphrase_file = o.passphrase_file})
    if not m then return bad(reason, why) end
    if m.stored and m.stored.bytes and size ~= m.stored.bytes then
      return bad("size-invalid", string.format("the archive is %d bytes, the manifest says %d", size, m.stored.bytes))
    end
    return {where = where, size = size, manifest = m, source = source}
  end

  -- verify.archive{bucket=, key= | file=, manifest= (text; else read beside the archive),
  --                client= (an s3 client), passphrase / passphrase_env / passphrase_file,
  --                history / history_file / history_s3 (see verify.record)}
  -- Streams the archive through sha256 -> decrypt -> gunzip -> sha256 -> SQL scan with no
  -- database and no plaintext written, and checks everything the manifest records.
  -- Returns {ok = true, ...} or {ok = false, reason = "missing" | "incomplete" | "size-invalid" |
  -- "checksum-mismatch" | "wrong-passphrase" | "truncated" | "table-mismatch", message, table}.
  function M.archive(o)
    check_options(o, "verify.archive", {bucket = 1, key = 1, file = 1, manifest = 1, client = 1, passphrase = 1,
                                        passphrase_env = 1, passphrase_file = 1, label = 1, history = 1,
                                        history_file = 1, history_s3 = 1})
    local t0 = require("time").monotonic()
    local r = M._archive(o)
    r.seconds = r.seconds or (require("time").monotonic() - t0)
    M.record({what = "archive", target = {archive = r.archive}, ok = r.ok, reason = r.reason, message = r.message,
              table = r.table, seconds = {total = require("time").monotonic() - t0},
              details = r.ok and {tables = r.tables, rows = r.rows, stored_bytes = r.stored_bytes,
                                  snapshot_time = r.manifest and r.manifest.snapshot_time} or nil}, o)
    return r
  end

  function M._archive(o)
    local pipe, crypto = require "pipe", require "crypto"
    local where = o.file or ("s3://" .. tostring(o.bucket) .. "/" .. tostring(o.key))
    local function bad(reason, message, extra)
      local r = {ok = false, reason = reason, message = message, archive = where}
      for k, v in pairs(extra or {}) do r[k] = v end
      return r
    end
    local pass = {passphrase = o.passphrase, passphrase_env = o.passphrase_env, passphrase_file = o.passphrase_file}
    local a, failed = M.open_archive(o)
    if not a then return failed end
    local m = a.manifest

    local ok, r = pcall(pipe.run, {a.source(), crypto.sha256{label = "stored"},
                                   crypto.decrypt(pass), crypto.gunzip{},
                                   crypto.sha256{label = "plain"}, M.sql_scan{label = "scan"}})
    if not ok then
      if clubio.is_error(r) and (r.class == "cancelled" or r.class == "timeout") then error(r, 0) end
      local reason = classify(r)
      -- the manifest's key check proved the passphrase: an archive that still does not decrypt
      -- is damaged, not opened with the wrong key
      if reason == "wrong-passphrase" and type(m.auth) == "table" and m.auth.key_check ~= nil then
        return bad("checksum-mismatch", "the archive does not decrypt with the right passphrase: it is damaged or truncated (" .. tostring(r) .. ")")
      end
      return bad(reason, tostring(r))
    end
    if m.stored and m.stored.sha256 and r.stored.hex ~= m.stored.sha256 then
      return bad("checksum-mismatch", "the archive's SHA-256 differs from the manifest's")
    end
    if m.plain and m.plain.sha256 and r.plain.hex ~= m.plain.sha256 then
      return bad("checksum-mismatch", "the decrypted dump's SHA-256 differs from the manifest's")
    end
    if r.scan.truncated then return bad("truncated", "the dump ends inside a COPY block") end
    local tname, tmsg = M.compare_tables(m.tables, r.scan.tables)
    if tname then return bad("table-mismatch", tmsg, {table = tname}) end
    return {ok = true, archive = where, manifest = m, stored_bytes = r.stored.bytes,
            plain_bytes = r.plain.bytes, tables = r.scan.table_count, rows = r.scan.rows,
            seconds = r.seconds}
  end

  ---------------------------------------------------------------------------------------------
  -- Freshness: is the newest of `times` (epoch seconds) at most max_age_hours old?
  function M.freshness(o)
    check_options(o, "verify.freshness", {times = 1, max_age_hours = 1, now = 1, what = 1, name = 1, history = 1,
                                          history_file = 1, history_s3 = 1})
    if type(o.max_age_hours) ~= "number" then
      clubio.fail{message = "verify.freshness: max_age_hours must be a number", class = "usage", code = "usage.option"}
    end
    local r = M._freshness(o)
    M.record({what = "freshness", target = {what = o.what or "backup", name = o.name}, ok = r.ok, reason = r.reason,
              message = r.message, details = {age_hours = r.age_hours, max_age_hours = r.max_age_hours,
                                              newest = r.newest_iso}}, o)
    return r
  end

  function M._freshness(o)
    local time = require "time"
    local newest
    for _, t in ipairs(o.times or {}) do if not newest or t > newest then newest = t end end
    local now = o.now or time.now()
    if not newest then
      return {ok = false, reason = "missing", message = "no " .. (o.what or "backup") .. " found"}
    end
    local age_h = (now - newest) / 3600
    local ok = age_h <= o.max_age_hours
    return {ok = ok, reason = (not ok) and "stale" or nil, newest = newest, newest_iso = time.iso(newest),
            age_hours = age_h, max_age_hours = o.max_age_hours,
            message = string.format("latest %s is %.1f hours old (limit %g)", o.what or "backup", age_h, o.max_age_hours)}
  end

  -- The rest of the module: the verification history, the runbook's queries, restore tests.
  require("clubio.verify_history")(M)
  require("clubio.verify_queries")(M)
  require("clubio.verify_restore")(M)
end
