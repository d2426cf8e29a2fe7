-- The payments schema of the PCI scenario (see policies/pci-dss.yaml), with synthetic data:
-- 300 payments whose card numbers are Luhn-valid test PANs of several brands and lengths, 50
-- customers, and a `secrets` table no AI workload may read. `cargo xtask demo` and the e2e
-- suite's MCP test (tests/tests/mcp.rs) load this file straight into PostgreSQL, untagged.
-- Deterministic: the same rows every time.

CREATE TABLE payments(
    id bigint PRIMARY KEY,
    card_number text,
    cardholder text,
    amount numeric,
    merchant text,
    created_at timestamptz
);
CREATE TABLE customers(id bigint PRIMARY KEY, email text, name text);
CREATE TABLE secrets(id int, token text);

WITH brands(n, prefix, len) AS (
    VALUES (0, '4', 16), (1, '51', 16), (2, '37', 15), (3, '6011', 16),
           (4, '2221', 16), (5, '4', 13), (6, '3530', 16), (7, '62', 19)
),
-- Prefix + pseudo-random digits: i -> i * m + c mod 10^k is one-to-one (m is prime to 10), so
-- no two payments of a brand share a number.
bodies AS (
    SELECT i, b.prefix || lpad(
        ((i::numeric * 72639354703862491 + 1000003) % (10::numeric ^ (b.len - 1 - length(b.prefix))))
            ::bigint::text,
        b.len - 1 - length(b.prefix), '0') AS body
    FROM generate_series(1, 300) AS i
    JOIN brands AS b ON b.n = i % 8
),
-- The Luhn check digit: from the right of the body, every other digit (the first included)
-- is doubled, 9 taken off when that exceeds 9.
pans AS (
    SELECT i, body || ((10 - (
        SELECT sum(CASE WHEN k % 2 = 1 THEN d * 2 - CASE WHEN d > 4 THEN 9 ELSE 0 END ELSE d END)
        FROM (
            SELECT k, substr(body, length(body) - k + 1, 1)::int AS d
            FROM generate_series(1, length(body)) AS k
        ) AS digits
    ) % 10) % 10)::text AS card_number
    FROM bodies
)
INSERT INTO payments
SELECT i,
       card_number,
       (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken'])[1 + i % 8]
           || ' ' ||
       (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen'])[1 + i % 7],
       round((i * 7919 % 50000) / 100.0 + 1, 2),
       (ARRAY['Acme Books', 'Blue Bottle', 'City Rail', 'Daily Grocer', 'Eastside Fuel',
              'Fresh Market', 'Gadget Hub', 'Harbor Hotel', 'Indigo Air', 'Juniper Cafe'])[1 + i % 10],
       timestamptz '2025-01-01 08:00:00+00' + i * interval '3 hours 17 minutes'
FROM pans;

INSERT INTO customers
SELECT i,
       lower(first) || '.' || lower(last) || i || '@example.com',
       first || ' ' || last
FROM generate_series(1, 50) AS i,
     LATERAL (SELECT
         (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken'])[1 + i % 8] AS first,
         (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen'])[1 + i % 7] AS last
     ) AS names;

INSERT INTO secrets VALUES
    (1, 'sk_live_demo_7f3a9c1e5b2d4806'),
    (2, 'whsec_demo_0b8e2f6a4c1d9e37'),
    (3, 'db-replica-password-demo-5d1c');
