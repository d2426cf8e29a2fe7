//! The status snapshot read from the daemon's state: what `pgwarden status` prints and the
//! metrics endpoint renders. The conversions from the layers' own types live here, so the
//! plain-data [`crate::status`] imports none of them.
use std::sync::PoisonError;

use crate::approval;
use crate::audit::{AuditMode, AuditStatus, JournaldMirror};
use crate::identity::Identity;
use crate::redirect::AttachPoint;
use crate::session::SessionInfo;
use crate::status::{self, Status};
use crate::tags::{Tag, TagSource};

use super::{NsServed, Shared, lock};

/// The agent's state now.
pub(super) fn status(shared: &Shared) -> Status {
    let (tagged, sticky_paths) = {
        let t = lock(&shared.tagger);
        let tagged = t.tagged().map(|(id, tag)| tagged(id.0, tag)).collect();
        let sticky = t.sticky().map(|p| p.0.clone()).collect();
        (tagged, sticky)
    };
    let (attached, counters, unix) = match &shared.redirect {
        Some(r) => {
            let r = lock(r);
            let counters = r
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let unix = match &r.unix_disabled {
                Some(why) => status::Unix {
                    state: "off (--tcp-only): tagged workloads can reach Unix sockets directly"
                        .into(),
                    missing: Some(why.clone()),
                    rules: None,
                },
                None => status::Unix {
                    state: if shared.listen_unix.is_some() {
                        "redirect"
                    } else {
                        "refuse (listen.unix: null)"
                    }
                    .into(),
                    missing: None,
                    rules: Some(status::UnixRules {
                        listen: shared.listen_unix.clone(),
                        intercept: shared.config.intercept_unix.clone(),
                        allow: shared.config.unix_allow.clone(),
                    }),
                },
            };
            (
                r.attached().iter().map(attach_point).collect(),
                counters,
                unix,
            )
        }
        None => (
            Vec::new(),
            std::collections::BTreeMap::new(),
            status::Unix {
                state: "off (listen-only)".into(),
                missing: None,
                rules: None,
            },
        ),
    };
    let policy = shared.env.policy.current();
    Status {
        agent: status::Agent {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: shared.started,
            mode: if shared.redirect.is_some() {
                status::Mode::Redirect
            } else {
                status::Mode::ListenOnly
            },
        },
        cgroup2_root: shared.cgroup_root.clone(),
        listen: shared.listen.clone(),
        intercept: shared
            .config
            .intercept
            .iter()
            .map(ToString::to_string)
            .collect(),
        unix,
        namespaces: shared
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(namespace)
            .collect(),
        attached,
        counters,
        workloads: shared
            .config
            .workloads
            .iter()
            .map(|w| status::Workload {
                name: w.name.clone(),
                systemd_unit: w.systemd_unit.clone(),
                cgroup: w.cgroup.clone(),
            })
            .collect(),
        tagged,
        sticky_paths,
        sessions: shared.env.registry.list().iter().map(session).collect(),
        approvals: approvals(&shared.env.approvals),
        budgets: shared.env.budgets.uses(),
        audit: audit(&shared.env.journal.status(), &forwarding(shared)),
        policy: status::Policy {
            version: policy.version,
            files: policy
                .files
                .iter()
                .map(|(path, sha256)| status::PolicyFile {
                    path: path.clone(),
                    sha256: sha256.clone(),
                })
                .collect(),
        },
    }
}

/// Held statements and open grants.
pub(super) fn approvals(a: &approval::Approvals) -> status::Approvals {
    status::Approvals {
        pending: a.pending().iter().map(pending).collect(),
        grants: a.grants().iter().map(grant).collect(),
    }
}

fn tagged(id: u64, tag: &Tag) -> status::Tagged {
    status::Tagged {
        id,
        path: tag.path.0.clone(),
        workload: tag.workload.0.clone(),
        source: match &tag.source {
            TagSource::Xattr => status::TagSource::Xattr,
            TagSource::SystemdUnit(p) => status::TagSource::SystemdUnit(p.clone()),
            TagSource::Cgroup(p) => status::TagSource::Cgroup(p.clone()),
        },
    }
}

fn attach_point(p: &AttachPoint) -> status::AttachPoint {
    status::AttachPoint {
        program: p.program.clone(),
        hook: p.hook.clone(),
        target: p.target.clone(),
    }
}

fn namespace(n: &NsServed) -> status::Namespace {
    status::Namespace {
        netns: n.ns.id.0,
        pid: n.ns.pid,
        listen: n.listen.clone(),
    }
}

fn session(s: &SessionInfo) -> status::Session {
    let m = &s.meta;
    status::Session {
        id: m.id.to_string(),
        workload: m.workload.0.clone(),
        identity: m.identity.as_ref().map(identity),
        client: m.client.0.to_string(),
        listen: m.listen.0.to_string(),
        server: m.server.0.to_string(),
        db: status::Db {
            user: m.db.user.clone(),
            database: m.db.database.clone(),
            application_name: m.db.application_name.clone(),
            options: m.db.options.clone(),
        },
        client_tls: m.client_tls,
        server_tls: m.server_tls,
        upstream_local: s.upstream_local,
        started: s.started,
    }
}

fn identity(i: &Identity) -> status::Identity {
    status::Identity {
        workload: i.workload.0.clone(),
        cgroup: i.cgroup.as_ref().map(|c| c.0.clone()),
        cgroup_id: i.cgroup_id.0,
        unit: i.unit.clone(),
        pid: i.pid,
        tid: i.tid,
        uid: i.uid,
        gid: i.gid,
        user: i.user.clone(),
        exe: i.exe.clone(),
        comm: i.comm.clone(),
        netns: i.netns,
        container: i.container.clone(),
    }
}

fn pending(r: &approval::Request) -> status::Pending {
    status::Pending {
        id: r.id,
        rule: status::ApprovalRule {
            id: r.rule.id.clone(),
            approvers: r.rule.approvers.clone(),
            timeout: r.rule.timeout,
            max_grant: r.rule.max_grant,
            reason: r.rule.reason.clone(),
            run_as: r.rule.run_as.clone(),
        },
        workload: r.workload.clone(),
        session: r.session.to_string(),
        statement: r.statement.clone(),
        normalized: r.normalized.clone(),
        reason: r.reason.clone(),
        pid: r.pid,
        exe: r.exe.clone(),
        uid: r.uid,
        process_user: r.process_user.clone(),
        unit: r.unit.clone(),
        cgroup: r.cgroup.clone(),
        requested: r.requested,
        expires: r.expires,
    }
}

fn grant(g: &approval::Grant) -> status::Grant {
    status::Grant {
        id: g.id,
        workload: g.workload.clone(),
        rule: g.rule.clone(),
        approvers: g.approvers.clone(),
        until: g.until,
        by: status::Caller {
            uid: g.by.uid,
            user: g.by.user.clone(),
            groups: g.by.groups.clone(),
            auth: g.by.auth.as_str().to_owned(),
            remote: g.by.remote.clone(),
        },
        comment: g.comment.clone(),
    }
}

/// The forwarding targets' state.
fn forwarding(shared: &Shared) -> Vec<crate::forward::TargetStatus> {
    shared
        .forwarders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(crate::forward::Forwarders::status)
        .unwrap_or_default()
}

fn forward(t: &crate::forward::TargetStatus, last_seq: u64) -> status::Forward {
    status::Forward {
        name: t.name.clone(),
        kind: t.kind.to_owned(),
        destination: t.destination.clone(),
        format: match t.format {
            crate::audit::export::Format::Jsonl => "jsonl",
            crate::audit::export::Format::Ocsf => "ocsf",
            crate::audit::export::Format::Rfc5424 => "rfc5424",
        }
        .to_owned(),
        delivered_seq: t.delivered_seq,
        lag: last_seq.saturating_sub(t.delivered_seq),
        state: if t.failing { "failing" } else { "ok" }.to_owned(),
        last_error: t.last_error.clone(),
        sent: t.sent,
        failures: t.failures,
        missing: t.missing,
    }
}

fn audit(s: &AuditStatus, targets: &[crate::forward::TargetStatus]) -> status::Audit {
    status::Audit {
        path: s.path.clone(),
        mode: match s.mode {
            AuditMode::Strict => status::AuditMode::Strict,
            AuditMode::Async => status::AuditMode::Async,
            AuditMode::Off => status::AuditMode::Off,
        },
        last_seq: s.last_seq,
        last_hash: s.last_hash.clone(),
        queue_depth: u64::try_from(s.queue_depth).unwrap_or(u64::MAX),
        records_written: s.records_written,
        write_errors: s.write_errors,
        journald: match s.journald {
            JournaldMirror::All => status::JournaldMirror::All,
            JournaldMirror::Events => status::JournaldMirror::Events,
            JournaldMirror::Off => status::JournaldMirror::Off,
        },
        journald_errors: s.journald_errors,
        dropped: s.dropped,
        last_error: s.last_error.clone(),
        reopens: s.reopens,
        last_reopen: s.last_reopen.clone(),
        rotations: s.rotations,
        archived: s.archived,
        archive_errors: s.archive_errors,
        retention_files: s.retention_files,
        retention_records: s.retention_records,
        last_retention: s.last_retention.clone(),
        free_bytes: s.free_bytes,
        forward: targets.iter().map(|t| forward(t, s.last_seq)).collect(),
    }
}

#[cfg(test)]
mod tests;
