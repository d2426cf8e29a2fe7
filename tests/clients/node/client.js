// node-postgres (`pg`) against the URL in argv[2]: the pgwarden e2e suite runs this inside a
// tagged cgroup, pointed at PostgreSQL's real address, and expects `OK` on stdout and exit 0.
//
// Every check throws on a mismatch, so anything unexpected exits non-zero with a stack trace.
'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

async function main() {
  const url = process.argv[2];
  if (!url) {
    throw new Error('usage: node client.js postgresql://user@host:port/db');
  }
  const client = new Client({ connectionString: url, application_name: 'pgwarden-e2e-node' });
  await client.connect();
  try {
    // Parameterized query (extended protocol: Parse/Bind/Execute with an unnamed statement).
    let res = await client.query('select $1::int + 1 as n, $2::text as s', [41, 'héllo']);
    assert.deepEqual(res.rows, [{ n: 42, s: 'héllo' }]);

    // A NULL parameter and a bytea parameter survive the trip.
    res = await client.query('select $1::text is null as isnull, $2::bytea as b', [
      null,
      Buffer.from([0, 1, 2, 255]),
    ]);
    assert.equal(res.rows[0].isnull, true);
    assert.deepEqual(res.rows[0].b, Buffer.from([0, 1, 2, 255]));

    // Multi-row select (simple protocol: no parameters).
    res = await client.query(
      'select g as i, repeat(chr(65 + g % 26), g) as s from generate_series(1, 1000) g order by g',
    );
    assert.equal(res.rowCount, 1000);
    assert.equal(res.rows[0].i, 1);
    assert.equal(res.rows[0].s, 'B');
    assert.equal(res.rows[999].i, 1000);
    assert.equal(res.rows[999].s.length, 1000);

    // A transaction: committed rows stay, rolled-back rows go.
    await client.query('create temp table items(id int primary key, name text)');
    await client.query('begin');
    await client.query('insert into items values ($1, $2), ($3, $4)', [1, 'one', 2, 'two']);
    await client.query('commit');
    await client.query('begin');
    await client.query('insert into items values ($1, $2)', [3, 'three']);
    res = await client.query('select count(*)::int as c from items');
    assert.equal(res.rows[0].c, 3, 'the open transaction sees its own insert');
    await client.query('rollback');
    res = await client.query('select count(*)::int as c from items');
    assert.equal(res.rows[0].c, 2, 'rollback kept the row');

    // A named prepared statement, used twice (parsed once, then only Bind/Execute).
    const byId = { name: 'item-by-id', text: 'select name from items where id = $1' };
    res = await client.query({ ...byId, values: [1] });
    assert.deepEqual(res.rows, [{ name: 'one' }]);
    res = await client.query({ ...byId, values: [2] });
    assert.deepEqual(res.rows, [{ name: 'two' }]);

    // An error comes back as an error, and the session stays usable afterwards.
    await assert.rejects(client.query('select 1 / $1::int as x', [0]), (err) => {
      assert.equal(err.code, '22012', `want division_by_zero, got ${err.code}: ${err.message}`);
      return true;
    });
    await assert.rejects(client.query('select 1/0'), (err) => {
      assert.equal(err.code, '22012', `want division_by_zero, got ${err.code}: ${err.message}`);
      return true;
    });
    res = await client.query('select $1::int * 2 as d', [21]);
    assert.equal(res.rows[0].d, 42);
    res = await client.query({ ...byId, values: [1] });
    assert.deepEqual(res.rows, [{ name: 'one' }], 'the prepared statement survived the error');
  } finally {
    await client.end();
  }
  console.log('OK');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
