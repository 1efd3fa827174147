-- Secret stripping for configuration backups, over an order-preserving JSON reader/writer.
--
--   local sanitize = require "clubio.sanitize"
--   local doc = sanitize.decode(text, "features.json")   -- raises naming the file on bad JSON
--   local redacted = sanitize.strip(doc, "features.json") --> {"features.json:stripe.secret_key", ...}
--   local out = sanitize.encode(doc)                       -- pretty JSON, original key order
--
-- Why not cjson: a config backup should read like the file it came from. cjson loses key order,
-- turns [] into {} and re-prints numbers through doubles; here objects keep their order, empty
-- arrays stay arrays and numbers keep their original text.
--
-- What counts as a secret:
--   - a key whose words (split at _ - . space and camelCase) include password, secret, token,
--     key, credential(s), dsn, ... or that squashes to apikey, accesskey, privatekey, ...: its
--     string values are replaced (also inside objects/arrays under it; numbers and booleans
--     stay: `tokens_per_minute: 100` or `token_bucket.capacity: 10` are not secrets);
--   - any string that looks like one: a URL with a password (only the password is replaced), an
--     AWS access key id, a PEM private key, well-known token prefixes (sk_live_, ghp_, xoxb-, ...),
--     a JWT, a `Bearer ...` value, or one long random-looking word (upper, lower and digits).
local cjson = require "cjson"
local M = {}

M.REDACTED = "[redacted]"

-- ---- reader -----------------------------------------------------------------------------

local function decode_error(src, name, pos, what)
  local line = 1
  for _ in src:sub(1, pos):gmatch("\n") do line = line + 1 end
  require("clubio").fail{message = string.format("%s is not valid JSON: %s at line %d", name, what, line),
                         class = "config", code = "config.bad_json",
                         hint = "fix the file (e.g. check it with `python3 -m json.tool " .. name .. "`), then re-run"}
end

function M.decode(src, name)
  name = name or "input"
  local pos = 1
  local function ws() pos = src:find("[^ \t\r\n]", pos) or #src + 1 end
  local value
  local function str()
    -- pos at the opening quote; reuse cjson for the escapes of one string token
    local i = pos + 1
    while true do
      local c = src:find('["\\]', i)
      if not c then decode_error(src, name, pos, "unterminated string") end
      if src:sub(c, c) == "\\" then i = c + 2 else i = c; break end
    end
    local ok, s = pcall(cjson.decode, src:sub(pos, i))
    if not ok or type(s) ~= "string" then decode_error(src, name, pos, "bad string escape") end
    pos = i + 1
    return s
  end
  function value()
    ws()
    local c = src:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local node = {t = "object", keys = {}, vals = {}}
      ws()
      if src:sub(pos, pos) == "}" then pos = pos + 1; return node end
      while true do
        ws()
        if src:sub(pos, pos) ~= '"' then decode_error(src, name, pos, "expected a key") end
        local k = str()
        ws()
        if src:sub(pos, pos) ~= ":" then decode_error(src, name, pos, "expected ':'") end
        pos = pos + 1
        if node.vals[k] == nil then node.keys[#node.keys + 1] = k end
        node.vals[k] = value()
        ws()
        local d = src:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return node end
        if d ~= "," then decode_error(src, name, pos - 1, "expected ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local node = {t = "array", items = {}}
      ws()
      if src:sub(pos, pos) == "]" then pos = pos + 1; return node end
      while true do
        node.items[#node.items + 1] = value()
        ws()
        local d = src:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return node end
        if d ~= "," then decode_error(src, name, pos - 1, "expected ',' or ']'") end
      end
    elseif c == '"' then
      return {t = "string", v = str()}
    else
      local lit = src:match("^true", pos) or src:match("^false", pos) or src:match("^null", pos)
      if lit then pos = pos + #lit; return {t = "raw", raw = lit} end
      -- JSON's number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][-+]?[0-9]+)? (no 01, 1., .5 or +1)
      local int = src:match("^-?0", pos) or src:match("^-?[1-9]%d*", pos)
      if int then
        local e = pos + #int
        local frac = src:match("^%.%d+", e)
        if frac then e = e + #frac end
        local exp = src:match("^[eE][-+]?%d+", e)
        if exp then e = e + #exp end
        if not src:find("^[%.eE]", e) then
          local num = src:sub(pos, e - 1)
          pos = e
          return {t = "raw", raw = num, number = true}
        end
        decode_error(src, name, e, "a malformed number")
      end
      decode_error(src, name, pos, pos > #src and "unexpected end of input" or ("unexpected '" .. c .. "'"))
    end
  end
  local v = value()
  ws()
  if pos <= #src then decode_error(src, name, pos, "trailing characters") end
  return v
end

-- ---- writer -----------------------------------------------------------------------------

-- Plain Lua values (strings, numbers, booleans, arrays, maps with sorted keys, cjson.null) as nodes.
function M.node(v)
  local ty = type(v)
  if ty == "table" and v.t and (v.keys or v.items or v.raw or v.v ~= nil) then return v end
  if ty == "string" then return {t = "string", v = v} end
  if ty == "number" then return {t = "raw", raw = math.type(v) == "integer" and tostring(v) or string.format("%.17g", v), number = true} end
  if ty == "boolean" then return {t = "raw", raw = tostring(v)} end
  if v == nil or v == cjson.null then return {t = "raw", raw = "null"} end
  if ty == "table" then
    if #v > 0 or next(v) == nil and getmetatable(v) == M.array_mt then
      local items = {}
      for i, x in ipairs(v) do items[i] = M.node(x) end
      return {t = "array", items = items}
    end
    local node = {t = "object", keys = {}, vals = {}}
    for k in pairs(v) do node.keys[#node.keys + 1] = k end
    table.sort(node.keys)
    for _, k in ipairs(node.keys) do node.vals[k] = M.node(v[k]) end
    return node
  end
  error("cannot encode a " .. ty)
end
M.array_mt = {}
-- An object node whose keys keep the order given: sanitize.object{{"a", 1}, {"b", node}}.
function M.object(pairs_list)
  local node = {t = "object", keys = {}, vals = {}}
  for _, kv in ipairs(pairs_list) do
    if kv[2] ~= nil then
      node.keys[#node.keys + 1] = kv[1]
      node.vals[kv[1]] = M.node(kv[2])
    end
  end
  return node
end

-- cjson escapes every "/" as "\/"; a config reads better without (still valid JSON)
local function jstr(s) return (cjson.encode(s):gsub("\\/", "/")) end

function M.encode(node, indent)
  local out = {}
  local function emit(n, pad)
    if n.t == "string" then out[#out + 1] = jstr(n.v)
    elseif n.t == "raw" then out[#out + 1] = n.raw
    elseif n.t == "array" then
      if #n.items == 0 then out[#out + 1] = "[]"; return end
      out[#out + 1] = "[\n"
      for i, x in ipairs(n.items) do
        out[#out + 1] = pad .. "  "
        emit(x, pad .. "  ")
        out[#out + 1] = i < #n.items and ",\n" or "\n"
      end
      out[#out + 1] = pad .. "]"
    else
      if #n.keys == 0 then out[#out + 1] = "{}"; return end
      out[#out + 1] = "{\n"
      for i, k in ipairs(n.keys) do
        out[#out + 1] = pad .. "  " .. jstr(k) .. ": "
        emit(n.vals[k], pad .. "  ")
        out[#out + 1] = i < #n.keys and ",\n" or "\n"
      end
      out[#out + 1] = pad .. "}"
    end
  end
  emit(M.node(node), indent or "")
  return table.concat(out)
end

-- ---- secrets ----------------------------------------------------------------------------

local SECRET_WORDS = {
  password = true, passwords = true, passwd = true, pwd = true, pass = true, passphrase = true,
  secret = true, secrets = true, token = true, key = true, keys = true, credential = true,
  credentials = true, creds = true, dsn = true, authorization = true,
}
local SECRET_SQUASHED = {"apikey", "accesskey", "secretkey", "privatekey", "signingkey", "authtoken",
                         "accesstoken", "refreshtoken", "clientsecret", "password", "passwd", "secret",
                         "credential", "webhooksecret", "connectionstring", "databaseurl", "dburl"}

-- The words of a key: snake, kebab, dotted, spaced and camelCase parts, lower-cased.
local function words(key)
  local s = key:gsub("(%l)(%u)", "%1_%2"):gsub("(%u)(%u%l)", "%1_%2"):lower()
  local w = {}
  for part in s:gmatch("[%l%d]+") do w[#w + 1] = part end
  return w, s:gsub("[^%l%d]", "")
end

function M.secret_key(key)
  local w, squashed = words(key)
  for _, x in ipairs(w) do if SECRET_WORDS[x] then return true end end
  for _, x in ipairs(SECRET_SQUASHED) do if squashed:find(x, 1, true) then return true end end
  return false
end

local PREFIXES = {"sk_live_", "sk_test_", "rk_live_", "rk_test_", "pk_live_", "whsec_", "ghp_", "gho_",
                  "ghs_", "ghu_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "xoxa-", "xoxs-", "npm_",
                  "AIza", "SG.", "shpat_", "sq0atp-", "AKIA", "ASIA"}

-- true when the whole string looks like a secret; a string with an embedded URL password is
-- returned with just the password replaced (second result).
function M.secret_value(s)
  if s:find("-----BEGIN [%u ]*PRIVATE KEY-----") then return true end
  if s:match("^[Bb]earer%s+%S+") or s:match("^[Bb]asic%s+%S+") then return true end
  for _, p in ipairs(PREFIXES) do
    if s:sub(1, #p) == p and #s >= #p + 8 and not s:find("%s") then return true end
  end
  if s:match("^eyJ[%w_-]+%.eyJ[%w_-]+%.[%w_-]*$") then return true end -- a JWT
  -- one long random-looking word: upper, lower and digits, no spaces, 32+ characters
  if #s >= 32 and s:match("^[%w+/=_%-]+$") and s:find("%u") and s:find("%l") and s:find("%d") then return true end
  -- URLs with a password: scheme://user:password@host -> keep everything but the password
  local replaced, n = s:gsub("(%a[%w+.-]*://[^/:@%s]*:)([^@/%s]+)(@)", "%1" .. M.REDACTED .. "%3")
  if n > 0 then return false, replaced end
  return false
end

-- Replaces secrets in place; returns the list of paths ("file:a.b[2].c") that were changed.
function M.strip(node, root)
  local changed = {}
  local function walk(n, path, under_secret)
    if n.t == "object" then
      for _, k in ipairs(n.keys) do
        local sub = n.vals[k]
        local p = path .. (path:sub(-1) == ":" and "" or ".") .. k
        local sk = under_secret or M.secret_key(k)
        walk(sub, p, sk)
      end
    elseif n.t == "array" then
      for i, x in ipairs(n.items) do walk(x, path .. "[" .. i .. "]", under_secret) end
    elseif n.t == "string" then
      if n.v == "" or n.v == M.REDACTED then return end
      local whole, replaced = M.secret_value(n.v)
      if under_secret or whole then
        n.v = M.REDACTED
        changed[#changed + 1] = path
      elseif replaced then
        n.v = replaced
        changed[#changed + 1] = path
      end
    end
  end
  walk(node, (root or "") .. ":", false)
  return changed
end

return M
