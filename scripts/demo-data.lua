-- Load a small demo schema and data into DATABASE_URL when it has no tables (for the sandbox)
--
-- clubio-dr run demo-data [ROWS]      (default 50000 orders; does nothing if tables exist)
local env, pgdump, log = require "env", require "pgdump", require "log"
local args = require("clubio.args").parse(arg, {max = 1, usage = "ROWS"})
local rows = tonumber(args[1] or "50000")
if not rows or rows < 1 or rows ~= math.floor(rows) then
  require("clubio").fail{message = "demo-data: ROWS must be a whole number >= 1, not '" .. tostring(args[1]) .. "'",
                         class = "usage", code = "usage.argument", hint = "clubio-dr run demo-data [ROWS]"}
end
local db <close> = pgdump.connect(env.get("DATABASE_URL"))
local n = db:query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")[1].n
if tonumber(n) > 0 then
  log.info("the database already has tables; demo data not loaded")
  return 0
end
db:query([[
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE TABLE users (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email text NOT NULL UNIQUE,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users(id),
  status order_status NOT NULL,
  total numeric(12,2) NOT NULL,
  items jsonb NOT NULL,
  note text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX orders_user_idx ON orders(user_id);
CREATE TABLE transactions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  order_id bigint NOT NULL REFERENCES orders(id),
  amount numeric(12,2) NOT NULL,
  currency char(3) NOT NULL DEFAULT 'EUR',
  provider_ref text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX transactions_order_idx ON transactions(order_id);
CREATE VIEW paid_orders AS SELECT * FROM orders WHERE status = 'paid';
COMMENT ON TABLE orders IS 'demo orders';
]])
db:query(string.format([[
INSERT INTO users (email, name, created_at)
  SELECT 'user' || g || '@example.com', 'User ' || g || E'\twith tab', now() - (g || ' minutes')::interval
  FROM generate_series(1, %d) g;
INSERT INTO orders (user_id, status, total, items, note, created_at)
  SELECT 1 + (g %% %d), (ARRAY['new','paid','shipped','cancelled']::order_status[])[1 + g %% 4],
         round((random() * 500)::numeric, 2),
         jsonb_build_object('sku', 'SKU-' || (g %% 997), 'qty', 1 + g %% 5),
         CASE WHEN g %% 7 = 0 THEN NULL ELSE 'note ' || md5(g::text) || E'\nsecond line' END,
         now() - (g || ' seconds')::interval
  FROM generate_series(1, %d) g;
INSERT INTO transactions (order_id, amount, provider_ref, created_at)
  SELECT id, total, 'ch_' || md5(id::text), least(created_at + interval '1 minute', now())
  FROM orders WHERE status IN ('paid', 'shipped');
]], rows // 10 + 1, rows // 10 + 1, rows))
log.info(string.format("demo data loaded: %d users, %d orders and their transactions", rows // 10 + 1, rows))
return 0
