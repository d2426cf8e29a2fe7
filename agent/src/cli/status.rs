//! The human views of the agent's replies: `status`, `approvals list`, `grants list`, read
//! from the typed snapshot (`--json` prints the snapshot itself).
use std::fmt::Write as _;

use crate::status::{Approvals, Status, TagSource};

/// `pgwarden status`.
pub(super) fn render(s: &Status) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_status(&mut out, s);
    out
}

fn write_status(out: &mut String, s: &Status) -> std::fmt::Result {
    let a = &s.agent;
    writeln!(
        out,
        "pgwarden {} (pid {}, {} mode)",
        a.version,
        a.pid,
        a.mode.name()
    )?;
    writeln!(out, "cgroup2 root: {}", s.cgroup2_root.display())?;
    writeln!(out, "listening:    {}", join(&s.listen))?;
    writeln!(out, "intercepting: {}", join(&s.intercept))?;
    let u = &s.unix;
    let via = u
        .rules
        .as_ref()
        .and_then(|r| r.listen.as_deref())
        .map(|l| format!(" via {l}"))
        .unwrap_or_default();
    writeln!(out, "unix sockets: {}{via}", u.state)?;
    if let Some(r) = &u.rules {
        let paths = |v: &[std::path::PathBuf]| join(v.iter().map(|p| p.display()));
        writeln!(out, "  intercept:  {}", paths(&r.intercept))?;
        writeln!(out, "  allow:      {}", paths(&r.allow))?;
    }
    if let Some(m) = &u.missing {
        writeln!(out, "  missing:    {m}")?;
    }
    writeln!(out, "attached:")?;
    for p in &s.attached {
        writeln!(out, "  {:<14} {:<22} {}", p.program, p.hook, p.target)?;
    }
    let counters = s.counters.iter().map(|(k, v)| format!("{k}={v}"));
    writeln!(
        out,
        "counters:     {}",
        counters.collect::<Vec<_>>().join(" ")
    )?;
    writeln!(out, "tagged cgroups:")?;
    for t in &s.tagged {
        let why = match &t.source {
            TagSource::Xattr => "xattr".to_owned(),
            TagSource::SystemdUnit(p) => format!("systemd_unit {p}"),
            TagSource::Cgroup(p) => format!("cgroup {p}"),
        };
        writeln!(out, "  {:<50} {:<20} ({why})", t.path, t.workload)?;
    }
    writeln!(out, "sessions: {}", s.sessions.len())?;
    for x in &s.sessions {
        let who = x.identity.as_ref();
        writeln!(
            out,
            "  {} {:<16} pid={} uid={} exe={} cgroup={} {} -> {}",
            x.id,
            x.workload,
            or_unknown(who.map(|i| i.pid)),
            or_unknown(who.map(|i| i.uid)),
            or_unknown(who.and_then(|i| i.exe.as_deref())),
            or_unknown(who.and_then(|i| i.cgroup.as_deref())),
            x.client,
            x.server,
        )?;
    }
    if !s.budgets.is_empty() {
        writeln!(out, "read budgets (rows sent in the window):")?;
        for b in &s.budgets {
            writeln!(out, "  {:<20} {:<24} {}", b.workload, b.rule, b.used)?;
        }
    }
    if !s.audit.forward.is_empty() {
        writeln!(out, "audit forwarding (last seq {}):", s.audit.last_seq)?;
        for f in &s.audit.forward {
            writeln!(
                out,
                "  {:<16} {:<8} {:<40} delivered {} lag {} {}{}",
                f.name,
                f.format,
                f.destination,
                f.delivered_seq,
                f.lag,
                f.state,
                f.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// `pgwarden approvals list`.
pub(super) fn render_pending(a: &Approvals, now: u64) -> String {
    if a.pending.is_empty() {
        return "no statement is waiting for approval\n".into();
    }
    let mut out = String::new();
    for p in &a.pending {
        let _ = writeln!(
            out,
            "#{} rule={}{} workload={} session={} pid={} exe={} expires in {}s\n    {}",
            p.id,
            p.rule.id,
            p.rule
                .run_as
                .as_ref()
                .map_or(String::new(), |r| format!(" run_as={r}")),
            p.workload,
            p.session,
            or_unknown(p.pid),
            or_unknown(p.exe.as_deref()),
            p.expires.saturating_sub(now),
            p.statement,
        );
    }
    out
}

/// `pgwarden grants list`.
pub(super) fn render_grants(a: &Approvals, now: u64) -> String {
    let mut out = String::new();
    for g in &a.grants {
        let _ = writeln!(
            out,
            "grant {} workload={} rule={} for {}s more, opened by {}",
            g.id,
            g.workload,
            g.rule,
            g.until.saturating_sub(now),
            or_unknown(g.by.user.as_deref()),
        );
    }
    out
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use crate::status::{self, Approvals, Status};

    fn status() -> Status {
        Status {
            agent: status::Agent {
                pid: 42,
                version: "0.1.0".into(),
                started: 0,
                mode: status::Mode::Redirect,
            },
            cgroup2_root: "/sys/fs/cgroup".into(),
            listen: vec!["127.0.0.1:6432".parse().unwrap()],
            intercept: vec!["*:5432".into()],
            unix: status::Unix {
                state: "redirect".into(),
                missing: None,
                rules: Some(status::UnixRules {
                    listen: Some("@pgwarden".into()),
                    intercept: vec!["/run/postgresql".into()],
                    allow: vec![],
                }),
            },
            counters: [("redirected".to_owned(), 3), ("rekey_failed".to_owned(), 0)].into(),
            tagged: vec![status::Tagged {
                id: 9,
                path: "/a.slice".into(),
                workload: "svc".into(),
                source: status::TagSource::SystemdUnit("a-*.service".into()),
            }],
            sessions: vec![status::Session {
                id: "s1".into(),
                workload: "svc".into(),
                client: "127.0.0.1:4000".into(),
                server: "127.0.0.1:5432".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_view() {
        let text = super::render(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "pgwarden 0.1.0 (pid 42, redirect mode)");
        assert_eq!(lines[2], "listening:    127.0.0.1:6432");
        assert_eq!(lines[4], "unix sockets: redirect via @pgwarden");
        assert_eq!(lines[5], "  intercept:  /run/postgresql");
        assert!(
            text.contains("counters:     redirected=3 rekey_failed=0\n"),
            "{text}"
        );
        assert!(text.contains("(systemd_unit a-*.service)"), "{text}");
        assert!(text.contains(
            "  s1 svc              pid=? uid=? exe=? cgroup=? 127.0.0.1:4000 -> 127.0.0.1:5432\n"
        ));
    }

    #[test]
    fn no_pending_says_so() {
        assert_eq!(
            super::render_pending(&Approvals::default(), 0),
            "no statement is waiting for approval\n"
        );
        assert_eq!(super::render_grants(&Approvals::default(), 0), "");
    }
}
