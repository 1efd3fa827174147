-- The benchmark database of bench/pgdump.sh and bench/restore.sh: customers, orders (about 270
-- bytes each with their events and index entries) and events, with indexes and a sequence.
--   psql -v ON_ERROR_STOP=1 -v rows=N -d DB -f bench/gen_db.sql
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, city text, created_at timestamptz);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int REFERENCES customers, created_at timestamptz,
  status text, amount numeric(12,2), note text);
CREATE TABLE events (id bigint PRIMARY KEY, order_id bigint, kind text, at timestamptz, data jsonb);
INSERT INTO customers SELECT g, 'Customer ' || g, 'user' || g || '@example.com',
  (ARRAY['Paris','Lyon','Berlin','Madrid','Rome','Oslo','Lisbon','Vienna'])[1 + g % 8],
  '2020-01-01'::timestamptz + g * interval '7 minutes' FROM generate_series(1, 100000) g;
INSERT INTO orders SELECT g, 1 + (g::bigint * 7919) % 100000, '2021-01-01'::timestamptz + g * interval '13 seconds',
  (ARRAY['new','paid','shipped','delivered','cancelled'])[1 + g % 5], ((g::bigint * 37) % 100000) / 100.0,
  'order ' || g || ' ' || (ARRAY['fragile','gift wrap','leave at door','call first','no note'])[1 + g % 5]
  || ' ref ' || substr(md5(g::text), 1, 12) FROM generate_series(1, :rows) g;
INSERT INTO events SELECT g, g, (ARRAY['created','paid','shipped'])[1 + g % 3],
  '2021-01-01'::timestamptz + g * interval '13 seconds',
  jsonb_build_object('ip', '10.' || (g % 250) || '.' || (g % 199) || '.' || (g % 7), 'agent', 'Mozilla/5.0',
                     'n', g % 1000) FROM generate_series(1, :rows / 2) g;
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_created ON orders (created_at);
CREATE INDEX events_order ON events (order_id);
CREATE SEQUENCE order_seq;
SELECT setval('order_seq', :rows);
VACUUM ANALYZE;
