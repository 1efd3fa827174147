-- The one argument parser of scripts and runbooks: declared options, positional bounds, `--`.
--
--   local args = require("clubio.args").parse(arg, {
--     options = {["--from"] = "STEP", ["--steps"] = true},  -- a string: takes a value (its metavar)
--     min = 0, max = 1,                                     -- bounds on positional arguments
--   })
--   args["--from"]  -- "x" or nil;  args["--steps"] -- true or nil;  args[1 .. args.n] positional
--
-- An option not declared (anything that starts with `-` before `--`, other than `-` alone) is a
-- usage error (exit status 2) naming it, never an argument; `--` ends the options (the host
-- passes it on for that); `--opt=value` and `--opt value` both work; an option given twice is
-- an error. The host's own flags (--dry-run, --yes, --json, --log-level, --timeout,
-- --no-progress) never reach here: they are in clubio.flags. `-h`/`--help` never reach here
-- either: the host prints the script's header and runs nothing.
local clubio = require "clubio"

local M = {}

-- the script's name for messages: arg[0] without folder and .lua
local function script_name(argv)
  local p = argv and argv[0]
  if type(p) ~= "string" then return "script" end
  return (p:match("([^/]+)%.lua$") or p:match("([^/]+)$") or p)
end

local function usage(name, msg)
  clubio.fail{message = name .. ": " .. msg, class = "usage", code = "usage.argument",
              hint = "see clubio-dr help " .. name}
end

-- parse(argv, spec) -> table of options (by their full name) and positionals (1..n, with n).
-- spec.options: {["--name"] = true | "METAVAR"}; spec.min, spec.max: positional bounds (0, 0 by
-- default: a script that takes positionals says so; math.huge for any number); spec.name: the name
-- in messages; spec.usage: what the positionals are, for the "missing" message.
function M.parse(argv, spec)
  spec = spec or {}
  argv = argv or {}
  local name = spec.name or script_name(argv)
  local options = spec.options or {}
  for k, v in pairs(options) do
    if type(k) ~= "string" or not k:match("^%-%-?[%w][%w%-]*$") or (v ~= true and type(v) ~= "string") then
      error("clubio.args: bad option spec " .. tostring(k), 2)
    end
  end
  local out, n, ended = {}, 0, false
  local i = 1
  while argv[i] ~= nil do
    local a = tostring(argv[i])
    if ended or a == "-" or a:sub(1, 1) ~= "-" then
      n = n + 1
      out[n] = a
    elseif a == "--" then
      ended = true
    else
      local key, value = a:match("^(%-%-[^=]+)=(.*)$")
      key = key or a
      local kind = options[key]
      if kind == nil then
        local known = {}
        for k in pairs(options) do known[#known + 1] = k end
        table.sort(known)
        usage(name, string.format("unknown option '%s'%s", key,
          #known > 0 and " (options: " .. table.concat(known, ", ") .. ")" or " (it takes no options)"))
      end
      if out[key] ~= nil then usage(name, string.format("option '%s' given twice", key)) end
      if kind == true then
        if value then usage(name, string.format("option '%s' takes no value", key)) end
        out[key] = true
      else
        if not value then
          i = i + 1
          value = argv[i]
          if value == nil then usage(name, string.format("option '%s' needs a value (%s)", key, kind)) end
          value = tostring(value)
        end
        if value == "" then usage(name, string.format("option '%s' needs a value (%s)", key, kind)) end
        out[key] = value
      end
    end
    i = i + 1
  end
  local min, max = spec.min or 0, spec.max or 0
  if n < min then
    usage(name, string.format("missing argument%s (%d needed%s)", min - n > 1 and "s" or "", min,
      spec.usage and ": " .. spec.usage or ""))
  end
  if max >= 0 and n > max then
    usage(name, string.format("unexpected argument '%s'%s", out[max + 1],
      max == 0 and " (it takes none)" or string.format(" (at most %d)", max)))
  end
  out.n = n
  return out
end

return M
