-- clubio.dr's small helpers: SQL identifiers and literals, DR_TABLES, text[] literals, qualified
-- names, one-value queries, and settings from the environment. Exported by clubio.dr (all but
-- getenv); the other parts of clubio.dr use them directly.
local clubio = require "clubio"

local M = {}

function M.getenv(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

function M.ident(name) return '"' .. name:gsub('"', '""') .. '"' end

-- The SQL that un-fences a database, as pasted into psql connected to it: a plain ALTER DATABASE
-- ... RESET fails there ("cannot execute ALTER DATABASE in a read-only transaction"), since the
-- fence makes every transaction read-only by default; BEGIN READ WRITE lifts that for this one.
function M.unfence_sql(db)
  return "BEGIN READ WRITE; ALTER DATABASE " .. M.ident(db) .. " RESET default_transaction_read_only; COMMIT;"
end
function M.literal(s) return "'" .. tostring(s):gsub("'", "''") .. "'" end

-- DR_TABLES: names separated by commas or spaces; each is `table` or `schema.table`, and either
-- part may be a quoted identifier ("Odd Schema"."Mixed Case Table", "" for a quote inside).
-- Returns {"schema.table", ...} (unquoted text, as pg_namespace/pg_class spell it); unquoted
-- parts are kept as written. A malformed list is a configuration error naming it.
function M.parse_table_list(text)
  local out, i, n = {}, 1, #text
  local function bad(why)
    clubio.fail{message = "DR_TABLES is malformed: " .. why, class = "config", code = "config.dr_tables",
                hint = 'separate names with commas; quote odd names: DR_TABLES=\'orders, "Odd Schema"."Mixed Case Table"\''}
  end
  while i <= n do
    local c = text:sub(i, i)
    if c:match("[,%s]") then
      i = i + 1
    else
      local parts = {}
      while true do
        local part
        if text:sub(i, i) == '"' then
          local buf, j = {}, i + 1
          while true do
            if j > n then bad("an unterminated quoted name") end
            local ch = text:sub(j, j)
            if ch == '"' then
              if text:sub(j + 1, j + 1) == '"' then buf[#buf + 1] = '"'; j = j + 2 else break end
            else
              buf[#buf + 1] = ch; j = j + 1
            end
          end
          part, i = table.concat(buf), j + 1
          if part == "" then bad("an empty quoted name") end
        else
          local s, e = text:find('^[^,%s."]+', i)
          if not s then bad("a name is missing near position " .. i) end
          part, i = text:sub(s, e), e + 1
        end
        parts[#parts + 1] = part
        if text:sub(i, i) == "." then i = i + 1 else break end
      end
      if #parts > 2 then bad("'" .. table.concat(parts, ".") .. "' has more than schema.table") end
      if i <= n and not text:sub(i, i):match("[,%s]") then bad("unexpected character near position " .. i) end
      out[#out + 1] = #parts == 2 and (parts[1] .. "." .. parts[2]) or ("public." .. parts[1])
    end
  end
  return out
end

-- A Lua list as a PostgreSQL text[] literal (each element quoted: spaces, commas and quotes in
-- names survive).
function M.text_array(list)
  local q = {}
  for i, v in ipairs(list) do q[i] = '"' .. tostring(v):gsub('[\\"]', "\\%0") .. '"' end
  return "{" .. table.concat(q, ",") .. "}"
end

-- "orders" -> "public"."orders"; "sales.orders" -> "sales"."orders"
function M.qualify(name)
  local schema, rel = name:match("^([^.]+)%.(.+)$")
  if not schema then schema, rel = "public", name end
  return M.ident(schema) .. "." .. M.ident(rel), schema .. "." .. rel
end

-- The first column of the first row of a query, or nil.
function M.scalar(conn, sql, params)
  local rows = conn:query(sql, params)
  local r = rows[1]
  if not r then return nil end
  local _, v = next(r)
  return v
end

return M
