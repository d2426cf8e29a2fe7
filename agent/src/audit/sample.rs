//! The records of the hidden `pgwarden audit write-sample` test aid (the end-to-end audit tests
//! and the journal benchmark append them through the real writer), also the unit tests' sample
//! session. Part of the binary on purpose, so not `#[cfg(test)]`.
use std::time::Duration;

use serde_json::json;

use super::record::{Actor, Db, Decision, Event, Outcome, Record, Statement};

/// A few sample records of a realistic session, for the hidden `audit write-sample` test
/// aid: `session.start` (with the identity), `query` (allow), `query.done`, `query.denied` (a
/// card number in a literal), `session.end`, repeated; record `i` belongs to session `i / 5`.
/// As the agent writes them: only `session.start` carries the identity.
pub fn record(i: u64, workload: &str, keep_literals: bool) -> Record {
    let session = format!("{:016x}", 0x5a00_0000_0000_0000 + i / 5);
    let base = Record::new(Event::SessionStart)
        .session(&session)
        .workload(workload);
    match i % 5 {
        0 => Record {
            event: Event::SessionStart,
            ..base
        }
        .actor(Actor {
            cgroup: Some(format!("pgwarden-test/{workload}")),
            unit: None,
            pid: Some(4242),
            uid: Some(0),
            user: Some("root".into()),
            exe: Some("/usr/bin/python3".into()),
            comm: Some("python3".into()),
            netns: None,
            container: None,
        })
        .policy_hash("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        .client(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)))
        .server(std::net::SocketAddr::from(([127, 0, 0, 1], 5432)))
        .db(Db {
            user: Some("app".into()),
            database: Some("payments".into()),
            application_name: Some("mcp".into()),
        }),
        1 => Record {
            event: Event::Query,
            ..base
        }
        .statement(
            Statement::from_sql(
                &format!("SELECT id, amount FROM payments WHERE id = {i}"),
                keep_literals,
            )
            .command("SELECT")
            .objects(["public.payments"]),
        )
        .decision(Decision::Allow)
        .rule("read.payments"),
        2 => Record {
            event: Event::QueryDone,
            ..base
        }
        .rows(i % 7)
        .outcome(Outcome::Success)
        .duration(Duration::from_micros(1500 + i)),
        3 => Record {
            event: Event::QueryDenied,
            ..base
        }
        .statement(
            Statement::from_sql(
                "UPDATE payments SET card_number = '4111111111111111' WHERE id = 1",
                keep_literals,
            )
            .command("UPDATE")
            .objects(["public.payments"]),
        )
        .decision(Decision::Deny)
        .rule("class.write")
        .sqlstate("42501")
        .error("pgwarden: class.write: writes are not allowed")
        .detail("card", "4111 1111 1111 1111"),
        _ => Record {
            event: Event::SessionEnd,
            ..base
        }
        .duration(Duration::from_millis(20)),
    }
    .detail("sample", json!(i))
}
