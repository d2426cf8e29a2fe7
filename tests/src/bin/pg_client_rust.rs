//! `pg-client-rust URL`: a tokio-postgres client the e2e suite runs inside a tagged cgroup (the
//! multi-threaded test process cannot move itself there). Prints `OK`; panics on any mismatch.
//!
//! It covers what a Rust service does over the extended protocol: parameters, binary results,
//! pipelined queries, a reused prepared statement, a rolled-back transaction, COPY both ways,
//! LISTEN/NOTIFY, and an error followed by more queries on the same connection.
#![forbid(unsafe_code)]

use std::env;
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::try_join_all;
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _, stream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

/// How long to wait for our own NOTIFY to come back.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let url = env::args()
        .nth(1)
        .expect("usage: pg-client-rust postgresql://user@host:port/db");
    let (mut client, notifications) = connect(&url).await;

    parameters_and_binary_results(&client).await;
    pipelined_queries(&client).await;
    reused_prepared_statement(&client).await;
    rolled_back_transaction(&mut client).await;
    copy_in_and_out(&client).await;
    listen_notify(&client, notifications).await;
    error_then_recovery(&client).await;

    println!("OK");
}

/// Connects and drives the connection on a task that forwards notifications to the receiver.
async fn connect(url: &str) -> (Client, mpsc::UnboundedReceiver<Notification>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = pin!(stream::poll_fn(|cx| connection.poll_message(cx)));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(AsyncMessage::Notice(notice)) => eprintln!("notice: {notice}"),
                Ok(_) => {}
                Err(err) => panic!("connection failed: {err}"),
            }
        }
    });
    (client, rx)
}

async fn parameters_and_binary_results(client: &Client) {
    // Parse/Bind/Execute with a parameter; tokio-postgres asks for binary results throughout.
    let row = client
        .query_one("select $1::int + 1", &[&41i32])
        .await
        .expect("select $1::int + 1");
    assert_eq!(row.get::<_, i32>(0), 42);

    let when = UNIX_EPOCH + Duration::from_secs(1_704_164_645); // 2024-01-02 03:04:05 UTC
    let row = client
        .query_one(
            "select $1::int8 * 2, $2::float8 / 4, $3::text || '!', $4::bytea, \
             '2024-01-02 03:04:05+00'::timestamptz, \
             '2024-01-02 03:04:05+00'::timestamptz::text, \
             array[1, 2, 3]::int4[], array['a', null, 'c'], $5::int8[], null::text",
            &[
                &(1i64 << 40),
                &2.5f64,
                &"héllo",
                &vec![0u8, 1, 254, 255],
                &vec![-1i64, 0, i64::MAX],
            ],
        )
        .await
        .expect("binary row");
    assert_eq!(row.get::<_, i64>(0), 1i64 << 41);
    assert!((row.get::<_, f64>(1) - 0.625).abs() < f64::EPSILON);
    assert_eq!(row.get::<_, String>(2), "héllo!");
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 1, 254, 255]);
    assert_eq!(row.get::<_, SystemTime>(4), when);
    assert!(
        row.get::<_, String>(5).starts_with("2024-01-02 03:04:05"),
        "timestamptz as text: {}",
        row.get::<_, String>(5)
    );
    assert_eq!(row.get::<_, Vec<i32>>(6), vec![1, 2, 3]);
    assert_eq!(
        row.get::<_, Vec<Option<String>>>(7),
        vec![Some("a".to_owned()), None, Some("c".to_owned())]
    );
    assert_eq!(row.get::<_, Vec<i64>>(8), vec![-1, 0, i64::MAX]);
    assert_eq!(row.get::<_, Option<String>>(9), None);

    // Many rows, binary, one round trip.
    let rows = client
        .query(
            "select g, md5(g::text) from generate_series(1, 10000) g order by g",
            &[],
        )
        .await
        .expect("10000 rows");
    assert_eq!(rows.len(), 10_000);
    assert_eq!(rows[9_999].get::<_, i32>(0), 10_000);
    assert_eq!(
        rows[0].get::<_, String>(1),
        "c4ca4238a0b923820dcc509a6f75849b"
    );
}

async fn pipelined_queries(client: &Client) {
    // With the statement prepared, each query is one Bind/Execute/Sync; polling them together
    // puts all of them on the wire before the first answer arrives.
    let stmt = client
        .prepare("select $1::int4 * 10, pg_backend_pid()")
        .await
        .expect("prepare");
    let params: Vec<i32> = (0..50).collect();
    let bound: Vec<[&(dyn ToSql + Sync); 1]> = params.iter().map(|n| [n as _]).collect();
    let rows = try_join_all(bound.iter().map(|p| client.query_one(&stmt, p)))
        .await
        .expect("pipelined queries");
    for (n, row) in params.iter().zip(&rows) {
        assert_eq!(row.get::<_, i32>(0), n * 10);
    }

    // Different statements in flight at once, unprepared (Parse/Describe first, then execute).
    let (a, b, c) = tokio::try_join!(
        client.query_one("select 'a'::text", &[]),
        client.query("select generate_series(1, 3)", &[]),
        client.query_one("select $1::text || $2::text", &[&"x", &"y"]),
    )
    .expect("joined queries");
    assert_eq!(a.get::<_, String>(0), "a");
    assert_eq!(
        b.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(c.get::<_, String>(0), "xy");
}

async fn reused_prepared_statement(client: &Client) {
    let stmt = client
        .prepare("select $1::int8 * 2, $2::text")
        .await
        .expect("prepare");
    for i in 0..100i64 {
        let text = format!("n{i}");
        let row = client
            .query_one(&stmt, &[&i, &text])
            .await
            .expect("execute the prepared statement");
        assert_eq!(row.get::<_, i64>(0), i * 2);
        assert_eq!(row.get::<_, String>(1), text);
    }
}

async fn rolled_back_transaction(client: &mut Client) {
    client
        .batch_execute("create temp table tx_items (id int primary key)")
        .await
        .expect("create table");
    let tx = client.transaction().await.expect("begin");
    let inserted = tx
        .execute(
            "insert into tx_items select generate_series(1, $1::int)",
            &[&10i32],
        )
        .await
        .expect("insert");
    assert_eq!(inserted, 10);
    let seen: i64 = tx
        .query_one("select count(*) from tx_items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(seen, 10, "the transaction sees its own rows");
    tx.rollback().await.expect("rollback");
    let after: i64 = client
        .query_one("select count(*) from tx_items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, 0, "rollback left rows behind");
}

async fn copy_in_and_out(client: &Client) {
    client
        .batch_execute("create temp table copied (id int, name text)")
        .await
        .expect("create table");
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!("{i}\tname {i} with \\t tab and \\\\ backslash\n"));
    }
    let sink = client
        .copy_in("COPY copied (id, name) FROM STDIN")
        .await
        .expect("COPY FROM STDIN");
    let mut sink = pin!(sink);
    // Several CopyData messages of uneven sizes.
    for chunk in text.as_bytes().chunks(7_777) {
        sink.send(Bytes::copy_from_slice(chunk))
            .await
            .expect("send CopyData");
    }
    let copied = sink.as_mut().finish().await.expect("CopyDone");
    assert_eq!(copied, 20_000);

    let out: Vec<Bytes> = client
        .copy_out("COPY (select id, name from copied order by id) TO STDOUT")
        .await
        .expect("COPY TO STDOUT")
        .try_collect()
        .await
        .expect("read CopyData");
    let out: Vec<u8> = out.concat();
    assert_eq!(
        String::from_utf8(out).expect("utf-8 COPY output"),
        text,
        "COPY TO STDOUT differs from what went in"
    );

    let binary: Vec<Bytes> = client
        .copy_out("COPY (select id from copied where id < 3 order by id) TO STDOUT (FORMAT binary)")
        .await
        .expect("COPY TO STDOUT binary")
        .try_collect()
        .await
        .expect("read binary CopyData");
    let binary = binary.concat();
    assert!(
        binary.starts_with(b"PGCOPY\n\xff\r\n\0"),
        "binary COPY header: {binary:?}"
    );
}

async fn listen_notify(client: &Client, mut notifications: mpsc::UnboundedReceiver<Notification>) {
    client
        .batch_execute("LISTEN pgwarden_e2e; NOTIFY pgwarden_e2e, 'hello from rust'")
        .await
        .expect("LISTEN/NOTIFY");
    let n = timeout(NOTIFY_TIMEOUT, notifications.recv())
        .await
        .expect("no notification within 10 s")
        .expect("the connection task ended");
    assert_eq!(n.channel(), "pgwarden_e2e");
    assert_eq!(n.payload(), "hello from rust");
    // pg_notify with a parameter, through the extended protocol this time.
    client
        .execute("select pg_notify('pgwarden_e2e', $1)", &[&"second"])
        .await
        .expect("pg_notify");
    let n = timeout(NOTIFY_TIMEOUT, notifications.recv())
        .await
        .expect("no second notification within 10 s")
        .expect("the connection task ended");
    assert_eq!(n.payload(), "second");
    client.batch_execute("UNLISTEN *").await.expect("UNLISTEN");
}

async fn error_then_recovery(client: &Client) {
    let err = client
        .query_one("select 1 / $1::int", &[&0i32])
        .await
        .expect_err("division by zero succeeded");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    let err = client
        .batch_execute("select 1/0")
        .await
        .expect_err("division by zero succeeded (simple protocol)");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    let row = client
        .query_one("select $1::text", &[&"still usable"])
        .await
        .expect("a query after errors");
    assert_eq!(row.get::<_, String>(0), "still usable");
}
