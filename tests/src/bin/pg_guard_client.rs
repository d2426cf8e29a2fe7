//! `pg-guard-client URL`: writes under a row limit over the extended protocol, as a Rust
//! service sends them (tokio-postgres: Parse/Describe/Sync, then Bind/Execute/Sync per
//! statement, pipelined when futures run together). The e2e suite runs it in a tagged cgroup
//! against a `payments` table of 300 rows and a limit of 100 rows per write, then checks the
//! table itself. Prints `OK`; panics on any mismatch.
#![forbid(unsafe_code)]

use std::env;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

#[tokio::main]
async fn main() {
    let url = env::args()
        .nth(1)
        .expect("usage: pg-guard-client postgresql://user@host:port/db");
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}"));
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            panic!("connection failed: {err}");
        }
    });

    // Over the limit: the server ran it, pgwarden undid it.
    let all = client
        .execute(
            "UPDATE payments SET amount = amount + 1 WHERE id > $1",
            &[&0i64],
        )
        .await;
    refused(all, "UPDATE of every row");

    // Within the limit: it stands.
    let n = client
        .execute("UPDATE payments SET amount = 11 WHERE id <= $1", &[&3i64])
        .await
        .expect("UPDATE of 3 rows");
    assert_eq!(n, 3, "rows updated");

    // Pipelined: three statements in flight at once, each with its own Sync; only the middle
    // one is over the limit.
    let (a, b, c) = tokio::join!(
        client.execute("UPDATE payments SET amount = 12 WHERE id = $1", &[&4i64]),
        client.execute("DELETE FROM payments WHERE id > $1", &[&0i64]),
        client.execute("UPDATE payments SET amount = 13 WHERE id = $1", &[&5i64]),
    );
    assert_eq!(a.expect("pipelined UPDATE of id 4"), 1);
    refused(b, "pipelined DELETE of every row");
    assert_eq!(c.expect("pipelined UPDATE of id 5"), 1);

    // RETURNING within the limit: its rows arrive.
    let rows = client
        .query(
            "UPDATE payments SET amount = 14 WHERE id <= $1 RETURNING id",
            &[&2i64],
        )
        .await
        .expect("UPDATE ... RETURNING of 2 rows");
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2], "RETURNING rows");

    // RETURNING over the limit: no row of it arrives, only the refusal.
    let rows = client
        .query(
            "UPDATE payments SET amount = 0 WHERE id > $1 RETURNING id",
            &[&0i64],
        )
        .await;
    refused(
        rows.map(|r| r.len() as u64),
        "UPDATE ... RETURNING of every row",
    );

    // A data-modifying CTE: its command tag says SELECT 1, the server's count says 300.
    let cte = client
        .query(
            "WITH d AS (DELETE FROM payments WHERE id > $1 RETURNING 1) SELECT count(*) FROM d",
            &[&0i64],
        )
        .await;
    refused(cte.map(|r| r.len() as u64), "DELETE in a CTE");

    // In a transaction: the refusal fails it as a server error would; nothing commits.
    in_transaction(&mut client).await;

    // The connection is still good.
    let one: i32 = client
        .query_one("SELECT $1::int", &[&1i32])
        .await
        .expect("SELECT after the refusals")
        .get(0);
    assert_eq!(one, 1);
    println!("OK");
}

async fn in_transaction(client: &mut Client) {
    let tx = client.transaction().await.expect("BEGIN");
    let n = tx
        .execute("UPDATE payments SET amount = 15 WHERE id = $1", &[&6i64])
        .await
        .expect("UPDATE of id 6 in the transaction");
    assert_eq!(n, 1);
    let all = tx
        .execute("UPDATE payments SET amount = 0 WHERE id > $1", &[&0i64])
        .await;
    refused(all, "UPDATE of every row in a transaction");
    let after = tx.execute("SELECT 1", &[]).await;
    let err = after.expect_err("a statement after the refusal in the same transaction");
    assert_eq!(
        err.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "after the refusal: {err}"
    );
    // COMMIT of a failed transaction rolls it back.
    let _ = tx.commit().await;
}

#[track_caller]
fn refused(result: Result<u64, tokio_postgres::Error>, what: &str) {
    let err = match result {
        Ok(n) => panic!("{what}: expected a refusal, got {n} rows"),
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {err}"));
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE, "{what}: {db}");
    assert!(
        db.message().contains("write.rows") && db.message().contains("undone"),
        "{what}: {}",
        db.message()
    );
}
