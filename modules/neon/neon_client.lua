-- The Neon API v2 client's operations, over the C core's request primitive (neon.c): names,
-- pagination, waiting for operations, and the errors users read. Embedded into the binary by
-- neon_lua.c (the build generates neon_client_lua.h from this file with modules/neon/embed.cmake).
-- Receives the C helpers and cjson.
local C, cjson = ...
local time = require "time"

local M = {}
local Client = {}
Client.__index = Client

local function fail(class, code, hint, fmt, ...)
  C.fail(class, code, hint or "", string.format(fmt, ...))
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

local function query(t)
  local parts = {}
  for _, kv in ipairs(t) do
    if kv[2] ~= nil then parts[#parts + 1] = kv[1] .. "=" .. urlencode(kv[2]) end
  end
  return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end

-- A point in time: an RFC 3339 string is passed as is; a number is epoch seconds (UTC), sent to
-- the microsecond (at least three decimals): a recovery point must not move to a whole second.
local function timestamp(v, what)
  if v == nil then return nil end
  if type(v) == "number" then
    local s = math.floor(v)
    local us = math.floor((v - s) * 1e6 + 0.5)
    if us >= 1000000 then s, us = s + 1, 0 end
    local frac = string.format("%06d", us):gsub("0+$", "")
    if #frac < 3 then frac = frac .. string.rep("0", 3 - #frac) end
    return os.date("!%Y-%m-%dT%H:%M:%S", s) .. "." .. frac .. "Z"
  end
  if type(v) ~= "string" or not v:match("^%d%d%d%d%-%d%d%-%d%d[T ]%d%d:%d%d:%d%d") then
    fail("usage", "usage.neon_time", "give an RFC 3339 timestamp such as 2024-01-15T10:30:00Z, or epoch seconds",
         "%s: invalid timestamp %q", what, tostring(v))
  end
  return v
end

local function lsn(v, what)
  if v == nil then return nil end
  if type(v) ~= "string" or not v:match("^%x+/%x+$") then
    fail("usage", "usage.neon_lsn", "an LSN looks like 0/16B3748", "%s: invalid LSN %q", what, tostring(v))
  end
  return v
end

function M.client(opts)
  opts = opts or {}
  local h, host, project = C.new(opts)
  return setmetatable({_h = h, host = host, project_id = project}, Client)
end

-- One call: returns status and the decoded body (nil when empty).
function Client:_call(method, path, body, what, accept)
  local status, text = C.request(self._h, method, path, body and cjson.encode(body) or nil, what, accept)
  local data
  if text and text:match("%S") then
    local ok, v = pcall(cjson.decode, text)
    if not ok then
      fail("failure", "neon.response", "is NEON_API_HOST a Neon API v2 endpoint?",
           "neon api answer to %s %s is not JSON", method, path)
    end
    data = v
  end
  return status, data
end

function Client:_p(rest)
  return "/projects/" .. urlencode(self.project_id) .. (rest or "")
end

function Client:_project_missing()
  fail("config", "neon.project_not_found", "check NEON_PROJECT_ID (neonctl projects list shows the ids)",
       "neon project %s not found at %s", self.project_id, self.host)
end

function Client:project()
  local status, d = self:_call("GET", self:_p(), nil, "neon project " .. self.project_id)
  if status == 404 then self:_project_missing() end
  return d.project
end

function Client:branches()
  local out, cursor = {}, nil
  repeat
    local status, d = self:_call("GET", self:_p("/branches" .. query{{"limit", 100}, {"cursor", cursor}}), nil,
                                 "branches of neon project " .. self.project_id)
    if status == 404 then self:_project_missing() end
    for _, b in ipairs(d.branches or {}) do out[#out + 1] = b end
    cursor = d.pagination and d.pagination ~= cjson.null and d.pagination.next
    if cursor == cjson.null then cursor = nil end
  until not cursor or #(d.branches or {}) == 0
  return out
end

-- A branch by id or name; nil when there is none.
function Client:branch(x)
  if type(x) ~= "string" or x == "" then
    fail("usage", "usage.neon_branch", nil, "neon: branch name or id expected, got %s", type(x))
  end
  if x:match("^br%-") then
    local status, d = self:_call("GET", self:_p("/branches/" .. urlencode(x)), nil, "neon branch " .. x)
    if status ~= 404 then return d.branch end
    self:project() -- raises when it is the project that is missing
  end
  for _, b in ipairs(self:branches()) do
    if b.name == x or b.id == x then return b end
  end
  return nil
end

function Client:_resolve(x, what)
  if type(x) == "table" and x.id then x = x.id end
  local b = self:branch(x)
  if not b then
    fail("failure", "neon.branch_not_found", "list the branches with n:branches() (or neonctl branches list)",
         "%sbranch %s not found in neon project %s", what and (what .. ": ") or "", x, self.project_id)
  end
  return b
end

-- Waits until every operation has finished; raises with the operation's own error.
function Client:_wait(ops)
  local start = time.monotonic()
  for _, op in ipairs(ops or {}) do
    local delay, cur = 0.1, op
    while cur.status ~= "finished" and cur.status ~= "skipped" do
      if cur.status == "failed" or cur.status == "error" or cur.status == "cancelled" then
        fail("failure", "neon.operation_failed", "see the operation in the Neon console (Monitoring > Operations)",
             "neon operation %s (%s) on branch %s %s: %s", cur.id, cur.action, tostring(cur.branch_id),
             cur.status, tostring(cur.error or "no error given"))
      end
      if time.monotonic() - start > C.timeout(self._h) then
        fail("timeout", "neon.operation_timeout", "the operation may still finish; check n:operations()",
             "neon operation %s (%s) did not finish within %.0f s", cur.id, cur.action, C.timeout(self._h))
      end
      time.sleep(delay)
      delay = math.min(delay * 1.6, 3)
      local status, d = self:_call("GET", self:_p("/operations/" .. urlencode(cur.id)), nil,
                                   "neon operation " .. cur.id)
      if status == 404 then
        fail("failure", "neon.operation_not_found", nil, "neon operation %s not found in project %s",
             cur.id, self.project_id)
      end
      cur = d.operation
    end
  end
end

-- Where a branch's history begins, from the API's branch fields: a branch restored from another
-- continues that one's history (restored_from), a child its parent's, and a root begins at its
-- creation. (Neon keeps a parent's history for its children; the retention limit is applied
-- by the caller.)
function Client:_history_start(id)
  local all = {}
  for _, x in ipairs(self:branches()) do all[x.id] = x end
  local seen, x, start = {}, all[id], nil
  while x and not seen[x.id] do
    seen[x.id] = true
    start = x.created_at
    local nxt = x.restored_from
    if nxt == nil or nxt == cjson.null then nxt = x.parent_id end
    x = (nxt ~= nil and nxt ~= cjson.null) and all[nxt] or nil
  end
  return start and time.parse(start) or nil
end

-- Turns a 400 about the branching point into an error that says what the history window of the
-- source branch really is: from where its history begins (or the retention limit, if later) to now.
function Client:_point_error(status, d, ts, at_lsn, what, source_id)
  if status ~= 400 then return end
  local msg = type(d) == "table" and d.message or ""
  if not tostring(msg):lower():find("histor") and not tostring(msg):lower():find("retention")
     and not tostring(msg):lower():find("range") then
    fail("failure", "neon.request", nil, "neon api refused %s (400): %s", what, tostring(msg))
  end
  local window = ""
  local ok, p = pcall(self.project, self)
  local ok2, start = pcall(self._history_start, self, source_id)
  local from = ok2 and start or nil
  if ok and p and p.history_retention_seconds then
    local keep = time.now() - p.history_retention_seconds
    if not from or keep > from then from = keep end
  end
  if from then
    window = string.format(" (history of this branch: from %s to now%s)", time.iso(from, true),
                           ok and p and p.history_retention_seconds
                             and string.format("; retention %d s", p.history_retention_seconds) or "")
  end
  fail("failure", "neon.outside_history", "pick a point inside the history window" .. window,
       "%s at %s is outside the history window%s: %s", what, ts or at_lsn, window, tostring(msg))
end

local function check(opts, what, allowed)
  C.check(opts, what, allowed)
  return opts or {}
end

function Client:create_branch(opts)
  opts = check(opts, "neon create_branch", {"name", "parent", "at", "lsn", "expires_at", "endpoint"})
  local parent = opts.parent and self:_resolve(opts.parent, "parent")
  local ts, at_lsn = timestamp(opts.at, "at"), lsn(opts.lsn, "lsn")
  if ts and at_lsn then fail("usage", "usage.neon_point", nil, "neon create_branch: give at or lsn, not both") end
  local endpoint = opts.endpoint
  if endpoint == nil then endpoint = "read_write" end
  if endpoint ~= false and endpoint ~= "read_write" and endpoint ~= "read_only" then
    fail("usage", "usage.neon_endpoint", nil, "neon create_branch: endpoint must be \"read_write\", \"read_only\" or false")
  end
  local body = {branch = {name = opts.name, parent_id = parent and parent.id, parent_timestamp = ts,
                          parent_lsn = at_lsn, expires_at = timestamp(opts.expires_at, "expires_at")}}
  if endpoint then body.endpoints = {{type = endpoint}} end
  local what = "branch " .. tostring(opts.name or "(unnamed)")
  local status, d = self:_call("POST", self:_p("/branches"), body, "neon " .. what, (ts or at_lsn) and 400 or nil)
  if status == 404 then self:_project_missing() end
  if status == 400 then
    local src = parent
    if not src then for _, x in ipairs(self:branches()) do if x.default then src = x end end end
    self:_point_error(status, d, ts, at_lsn, "neon " .. what .. " from " .. (src and src.name or "the default branch"),
                      src and src.id)
  end
  self:_wait(d.operations)
  local b = self:branch(d.branch.id)
  return b or d.branch
end

function Client:delete_branch(x)
  local b = self:_resolve(x)
  local status, d = self:_call("DELETE", self:_p("/branches/" .. b.id), nil, "neon branch " .. b.name)
  if status == 404 then return false end
  self:_wait(d.operations)
  return true
end

function Client:restore_branch(opts)
  opts = check(opts, "neon restore_branch", {"branch", "source", "at", "lsn", "preserve_under_name"})
  if opts.branch == nil then fail("usage", "usage.neon_branch", nil, "neon restore_branch: option 'branch' is required") end
  local b = self:_resolve(opts.branch)
  local src
  if opts.source then
    src = self:_resolve(opts.source, "source")
  elseif b.parent_id and b.parent_id ~= cjson.null then
    src = {id = b.parent_id, name = b.parent_id}
  elseif opts.at or opts.lsn then
    src = b
  else
    fail("usage", "usage.neon_source", "give source = <branch>, or at = <time> to restore the branch from its own history",
         "neon restore_branch: branch %s has no parent to reset to", b.name)
  end
  local ts, at_lsn = timestamp(opts.at, "at"), lsn(opts.lsn, "lsn")
  if opts.preserve_under_name == nil then
    -- the API refuses (400) a restore of a branch that has children, or from its own history,
    -- without a name to keep the current state under: say so before asking
    local why = src.id == b.id and "restores from its own history" or nil
    if not why then
      for _, x in ipairs(self:branches()) do
        if x.parent_id == b.id then why = "has child branches (" .. x.name .. ")"; break end
      end
    end
    if why then
      fail("usage", "usage.neon_preserve", "pass preserve_under_name = <a new branch name> to keep the current state",
           "neon restore_branch: branch %s %s; the api requires preserve_under_name", b.name, why)
    end
  end
  local body = {source_branch_id = src.id, source_timestamp = ts, source_lsn = at_lsn,
                preserve_under_name = opts.preserve_under_name}
  local status, d = self:_call("POST", self:_p("/branches/" .. b.id .. "/restore"), body, "neon branch " .. b.name,
                               (ts or at_lsn) and 400 or nil)
  if status == 404 then
    fail("failure", "neon.branch_not_found", nil, "branch %s or %s not found in neon project %s", b.name, src.name,
         self.project_id)
  end
  if status == 400 then
    self:_point_error(status, d, ts, at_lsn, "restore of neon branch " .. b.name .. " from " .. src.name, src.id)
  end
  self:_wait(d.operations)
  return self:branch(b.id)
end

function Client:set_default(x)
  local b = self:_resolve(x)
  local status, d = self:_call("POST", self:_p("/branches/" .. b.id .. "/set_as_default"), nil, "neon branch " .. b.name)
  if status == 404 then fail("failure", "neon.branch_not_found", nil, "branch %s not found in neon project %s", b.name, self.project_id) end
  self:_wait(d.operations)
  return self:branch(b.id)
end

function Client:endpoints(x)
  local path = self:_p("/endpoints")
  if x ~= nil then path = self:_p("/branches/" .. self:_resolve(x).id .. "/endpoints") end
  local status, d = self:_call("GET", path, nil, "endpoints of neon project " .. self.project_id)
  if status == 404 then self:_project_missing() end
  return d.endpoints
end

function Client:operations()
  local status, d = self:_call("GET", self:_p("/operations"), nil, "operations of neon project " .. self.project_id)
  if status == 404 then self:_project_missing() end
  return d.operations
end

local function sole(self, b, kind, key)
  local status, d = self:_call("GET", self:_p("/branches/" .. b.id .. "/" .. kind), nil, "neon branch " .. b.name)
  local list = status == 200 and d[kind] or {}
  if #list == 1 then return list[1].name end
  local names = {}
  for _, x in ipairs(list) do names[#names + 1] = x.name end
  fail("usage", "usage.neon_" .. key, "pass " .. key .. " = one of: " .. table.concat(names, ", "),
       "neon connection_uri: branch %s has %d %s; say which", b.name, #list, kind)
end

-- The connection URI of a branch (its password is registered as a secret: never logged).
function Client:connection_uri(opts)
  opts = check(opts, "neon connection_uri", {"branch", "database", "role", "pooled"})
  local b
  if opts.branch then
    b = self:_resolve(opts.branch)
  else
    for _, x in ipairs(self:branches()) do if x.default then b = x end end
    if not b then fail("failure", "neon.no_default", nil, "neon project %s has no default branch", self.project_id) end
  end
  local database = opts.database or sole(self, b, "databases", "database")
  local role = opts.role or sole(self, b, "roles", "role")
  local status, d = self:_call("GET", self:_p("/connection_uri" .. query{{"branch_id", b.id}, {"database_name", database},
                                 {"role_name", role}, {"pooled", opts.pooled and "true" or nil}}), nil,
                               "neon branch " .. b.name)
  if status == 404 then
    fail("failure", "neon.not_found", "check the database and role names (n:connection_uri{branch=..., database=..., role=...})",
         "database %s or role %s not found on neon branch %s", database, role, b.name)
  end
  return C.secret_uri(d.uri)
end

return M
