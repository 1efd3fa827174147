-- A schema with many features, for pgdump round-trip tests (tests/pgdump/test_pgdump.lua).
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE SCHEMA "Sales Dept";

CREATE TABLE people (
  id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  email citext UNIQUE,
  tags text[],
  scores integer[],
  doc json,
  docb jsonb,
  photo bytea,
  m mood,
  n posint,
  amount numeric(20, 6),
  big numeric,
  seen timestamptz,
  ratio double precision,
  name_len integer GENERATED ALWAYS AS (length(name)) STORED,
  secret text DEFAULT encode(gen_random_bytes(4), 'hex')
);
COMMENT ON TABLE people IS 'people; with a ''quote'' and a $$dollar$$';
COMMENT ON COLUMN people.name IS 'the name';

CREATE TABLE "Sales Dept"."Order Items" (
  "Id" bigserial PRIMARY KEY,
  "personId" integer REFERENCES people (id),
  "Note;Semi" text,
  qty integer DEFAULT 1
);
CREATE INDEX "order items by person" ON "Sales Dept"."Order Items" ("personId");

CREATE SEQUENCE counter_seq START 100;

CREATE TABLE events (
  id bigint NOT NULL,
  at date NOT NULL,
  payload text,
  PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_payload ON events (payload);

CREATE TABLE audit (id serial PRIMARY KEY, what text, at timestamptz DEFAULT now());

CREATE FUNCTION audit_people() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
  -- a comment with a ; inside the body
  INSERT INTO audit(what) VALUES ('people ' || TG_OP || '; id=' || NEW.id);
  RETURN NEW;
END
$body$;
CREATE TRIGGER people_audit AFTER INSERT ON people FOR EACH ROW EXECUTE FUNCTION audit_people();

CREATE VIEW people_view AS SELECT id, name, m FROM people WHERE m <> 'sad';
CREATE MATERIALIZED VIEW mood_counts AS SELECT m, count(*) AS n FROM people GROUP BY m;

CREATE TABLE big (id bigint PRIMARY KEY, v text, f float8);

INSERT INTO people (name, email, tags, scores, doc, docb, photo, m, n, amount, big, seen, ratio) VALUES
  ('plain', 'A@Example.com', '{a,b}', '{1,2,3}', '{"a": 1}', '{"b": [1, 2]}', '\x00ff10', 'happy', 1,
   123.456789, 1e30, '2024-02-29 12:34:56.789+01', 0.1),
  (E'tab\there', 'b@example.com', '{"with space","with,comma","quote\""}', NULL, '"s"', 'null', '', 'ok', 2,
   -0.000001, 'NaN', '-infinity', 'Infinity'),
  (E'new\nline\r\nand \\ backslash', NULL, '{}', '{NULL}', NULL, '{"k": "ü €"}', NULL, 'sad', 3, 0, 0,
   'infinity', -0.0),
  ('unicode ü ñ 日本語 🎉', 'c@example.com', ARRAY[NULL, 'x'], '{-1}', '[1, 2.5]', '{"deep": {"x": null}}',
   decode('5c2e0a', 'hex'), NULL, NULL, NULL, NULL, NULL, 1.7976931348623157e308),
  (E'\\.', NULL, NULL, NULL, NULL, NULL, E'\\x5c2e', NULL, NULL, NULL, NULL, NULL, 5e-324);
INSERT INTO "Sales Dept"."Order Items" ("personId", "Note;Semi") VALUES (1, 'a;b'), (2, E'--not a comment'), (3, '/* nor this */');
INSERT INTO events VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b'), (3, '2024-12-31', E'c\\N');
SELECT setval('counter_seq', 142);
INSERT INTO big SELECT g, repeat(md5(g::text), 3), g / 7.0 FROM generate_series(1, 60000) g;
REFRESH MATERIALIZED VIEW mood_counts;
