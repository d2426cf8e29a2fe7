//! The status types mirror the layers' own: each conversion must write the JSON the layer's
//! own type writes, so a field added there and not here fails here.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::approval;
use crate::audit::{AuditMode, AuditStatus, JournaldMirror};
use crate::cgroup::CgroupPath;
use crate::identity::Identity;
use crate::names::{
    CgroupId, ClientAddr, ListenAddr, OrigDstAddr, SessionId, SockAddr, WorkloadName,
};
use crate::session::{DbParams, SessionInfo, SessionMeta};
use crate::tags::{Tag, TagSource};

fn json(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

fn inet(s: &str) -> SockAddr {
    SockAddr::Inet(s.parse::<SocketAddr>().unwrap())
}

fn identity(netns: Option<u64>) -> Identity {
    Identity {
        workload: WorkloadName("svc".into()),
        cgroup: Some(CgroupPath("/system.slice/svc.service".into())),
        cgroup_id: CgroupId(99),
        unit: Some("svc.service".into()),
        pid: 1234,
        tid: 1235,
        uid: 1000,
        gid: 1001,
        user: Some("svc".into()),
        exe: None,
        comm: "psql".into(),
        netns,
        container: netns.map(|_| "c0ffee".into()),
    }
}

#[test]
fn sessions_write_what_the_registry_writes() {
    for identity in [
        None,
        Some(identity(None)),
        Some(identity(Some(4_026_532_000))),
    ] {
        let info = SessionInfo {
            meta: Arc::new(SessionMeta {
                id: SessionId(0x1234_5678),
                workload: WorkloadName("svc".into()),
                identity,
                client: ClientAddr(inet("127.0.0.1:40000")),
                listen: ListenAddr(SockAddr::Unix("@pgwarden".into())),
                server: OrigDstAddr(inet("[::1]:5432")),
                db: DbParams {
                    user: "app".into(),
                    database: "appdb".into(),
                    application_name: Some("psql".into()),
                    options: None,
                },
                client_tls: true,
                server_tls: false,
                netns: None,
                login: None,
            }),
            upstream_local: Some(inet("127.0.0.1:40001").inet().unwrap()),
            started: 1_700_000_000,
        };
        assert_eq!(json(&super::session(&info)), json(&info));
    }
}

#[test]
fn approvals_write_what_approvals_write() {
    let rule = approval::Rule {
        id: "bulk-read".into(),
        approvers: vec!["alice".into(), "group:dba".into()],
        timeout: Duration::from_secs(300),
        max_grant: Some(Duration::from_millis(1500)),
        reason: Some("bulk reads need a yes".into()),
        run_as: None,
    };
    let request = approval::Request {
        id: 7,
        rule,
        workload: "svc".into(),
        session: SessionId(42),
        statement: "SELECT 1".into(),
        normalized: "SELECT ?".into(),
        reason: Some("100 rows sent".into()),
        pid: Some(1234),
        exe: None,
        uid: Some(1000),
        process_user: Some("mcp".into()),
        unit: Some("mcp-payments.service".into()),
        cgroup: Some("system.slice/mcp-payments.service".into()),
        requested: 1,
        expires: 2,
    };
    assert_eq!(json(&super::pending(&request)), json(&request));
    let grant = approval::Grant {
        id: 3,
        workload: "svc".into(),
        rule: "bulk-read".into(),
        approvers: vec!["user:alice".into()],
        until: 9,
        by: approval::Caller {
            uid: None,
            user: Some("alice".into()),
            groups: vec!["dba".into()],
            auth: approval::Auth::Token,
            remote: Some("192.0.2.1:4000".into()),
        },
        comment: Some("ticket 12".into()),
    };
    assert_eq!(json(&super::grant(&grant)), json(&grant));
}

#[test]
fn tags_write_what_the_tagger_writes() {
    for source in [
        TagSource::Xattr,
        TagSource::SystemdUnit("svc-*.service".into()),
        TagSource::Cgroup("/x/**".into()),
    ] {
        let tag = Tag {
            path: CgroupPath("/x/y".into()),
            workload: WorkloadName("svc".into()),
            source,
        };
        let mut want = json(&tag);
        want["id"] = Value::from(5);
        assert_eq!(json(&super::tagged(5, &tag)), want);
    }
}

#[test]
fn audit_writes_what_the_journal_writes() {
    for (mode, journald) in [
        (AuditMode::Strict, JournaldMirror::All),
        (AuditMode::Async, JournaldMirror::Events),
        (AuditMode::Off, JournaldMirror::Off),
    ] {
        let s = AuditStatus {
            path: PathBuf::from("/var/log/pgwarden/audit.jsonl"),
            mode,
            last_seq: 12,
            last_hash: "ab".into(),
            queue_depth: 3,
            records_written: 12,
            write_errors: 1,
            journald,
            journald_errors: 2,
            dropped: 0,
            last_error: Some("disk full".into()),
            reopens: 4,
            last_reopen: Some("unlinked".into()),
            rotations: 5,
            archived: 6,
            archive_errors: 7,
            retention_files: 8,
            retention_records: 9,
            last_retention: Some("seq 1..=9".into()),
            free_bytes: 10,
        };
        assert_eq!(json(&super::audit(&s, &[])), json(&s));
    }
}
