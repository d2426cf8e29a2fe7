"""psycopg 3 (binary results, pipelines, server-side cursors, COPY) against the URL in argv[1].

The pgwarden e2e suite runs this inside a tagged cgroup, pointed at PostgreSQL's real address,
and expects `OK` on stdout and exit 0. Every check raises on a mismatch.
"""

import datetime
import sys
from decimal import Decimal

import psycopg
from psycopg import errors


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: client.py postgresql://user@host:port/db")
    check(psycopg.pq.__impl__, "binary", "libpq wrapper (psycopg[binary])")

    with psycopg.connect(sys.argv[1], application_name="pgwarden-e2e-python") as conn:
        cur = conn.cursor(binary=True)

        # Binary results of common types, with binary parameters.
        cur.execute(
            "select %s::int4, %s::int8, %s::text, %s::numeric, %s::bytea,"
            " %s::int4[], %s::text[], %s::float8, %s::bool, %s::date, null::int",
            (
                7,
                2**40,
                "héllo wörld",
                Decimal("12345.678901"),
                b"\x00\x01\xfe\xff",
                [1, 2, None, 4],
                ["a", "b,c", 'd"e'],
                1.5,
                True,
                datetime.date(2024, 2, 29),
            ),
        )
        check(cur.pgresult.fformat(0), 1, "result format of column 0 (1 = binary)")
        check(
            cur.fetchone(),
            (
                7,
                2**40,
                "héllo wörld",
                Decimal("12345.678901"),
                b"\x00\x01\xfe\xff",
                [1, 2, None, 4],
                ["a", "b,c", 'd"e'],
                1.5,
                True,
                datetime.date(2024, 2, 29),
                None,
            ),
            "binary row",
        )
        cur.execute("select 1::numeric / 3, '-0.000001'::numeric, 'NaN'::numeric")
        third, tiny, nan = cur.fetchone()
        check(str(third)[:8], "0.333333", "1/3 as numeric")
        check(tiny, Decimal("-0.000001"), "small numeric")
        check(nan.is_nan(), True, "NaN numeric")

        # Many rows in binary.
        cur.execute("select g, md5(g::text) from generate_series(1, 5000) g order by g")
        rows = cur.fetchall()
        check(len(rows), 5000, "row count")
        check(rows[-1][0], 5000, "last row")

        # executemany (psycopg pipelines it: many Bind/Execute before one Sync).
        cur.execute("create table items (id int primary key, name text, price numeric)")
        cur.executemany(
            "insert into items values (%s, %s, %s)",
            [(i, f"item {i}", Decimal(i) / 100) for i in range(1, 501)],
        )
        cur.execute("select count(*), sum(price) from items")
        check(cur.fetchone(), (500, Decimal("1252.50")), "executemany result")
        conn.commit()

        # An explicit pipeline: several queries in flight, results read afterwards.
        with conn.pipeline():
            c1 = conn.cursor(binary=True)
            c2 = conn.cursor(binary=True)
            c1.execute("select name from items where id = %s", (42,))
            c2.execute("select price from items where id = %s", (420,))
            cur.execute("update items set name = %s where id = %s", ("renamed", 1))
        check(c1.fetchone(), ("item 42",), "pipelined query 1")
        check(c2.fetchone(), (Decimal("4.20"),), "pipelined query 2")
        check(cur.rowcount, 1, "pipelined update")
        conn.commit()

        # A server-side (named) cursor: DECLARE, then FETCH in batches.
        with conn.cursor(name="big", binary=True) as scur:
            scur.itersize = 333
            scur.execute("select g, g * 2 from generate_series(1, 10000) g order by g")
            total = 0
            count = 0
            for a, b in scur:
                check(b, a * 2, "named cursor row")
                total += a
                count += 1
            check((count, total), (10000, 50005000), "named cursor totals")
        conn.commit()

        # COPY FROM STDIN (text rows written by psycopg) and TO STDOUT, text and binary.
        cur.execute("create table copied (id int, name text, data bytea)")
        sent = [(i, f"row\t{i}\nwith newline", bytes([i % 256, 0, 255])) for i in range(2000)]
        with cur.copy("COPY copied (id, name, data) FROM STDIN") as copy:
            for row in sent:
                copy.write_row(row)
        check(cur.rowcount, 2000, "rows copied in")
        with cur.copy("COPY (select id, name, data from copied order by id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "bytea"])
            got = list(copy.rows())
        check(got, sent, "COPY TO STDOUT (text)")
        with cur.copy(
            "COPY (select id, name, data from copied order by id) TO STDOUT (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "bytea"])
            got = list(copy.rows())
        check(got, sent, "COPY TO STDOUT (binary)")
        with cur.copy("COPY copied (id, name, data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "bytea"])
            copy.write_row((9999, "binary in", b"\x01\x02"))
        cur.execute("select name, data from copied where id = 9999")
        check(cur.fetchone(), ("binary in", b"\x01\x02"), "COPY FROM STDIN (binary)")
        conn.commit()

        # An error, a refused follow-up inside the failed transaction, rollback, recovery.
        try:
            cur.execute("select 1 / %s::int", (0,))
            raise AssertionError("division by zero did not fail")
        except errors.DivisionByZero as err:
            check(err.sqlstate, "22012", "sqlstate")
        try:
            cur.execute("select 1")
            raise AssertionError("a failed transaction accepted a query")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        cur.execute("select %s::int + 1", (41,))
        check(cur.fetchone(), (42,), "query after rollback")
        cur.execute("select count(*) from items")
        check(cur.fetchone(), (500,), "committed data after rollback")

        conn.commit()

        # Autocommit mode, as tools often use it.
        conn.autocommit = True
        cur.execute("drop table items")
        cur.execute("drop table copied")
        check(conn.info.transaction_status, psycopg.pq.TransactionStatus.IDLE, "idle")

    print("OK")


if __name__ == "__main__":
    main()
