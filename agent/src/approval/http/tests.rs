use std::net::SocketAddr;

use hyper::header::{HeaderMap, HeaderValue};

use super::*;

struct NoWorkloads;

impl Workloads for NoWorkloads {
    fn workload_of(&self, _: u32) -> Option<String> {
        None
    }
    fn namespace_pids(&self) -> Vec<u32> {
        vec![]
    }
}

fn api(dir: &std::path::Path, trusted: Option<TrustedHeader>) -> Api {
    Api {
        approvals: Arc::new(Approvals::default()),
        directory: Directory::new(dir.join("approvers.json")),
        trusted,
        oidc: None,
        base_url: "https://pgw.example:9188".into(),
        workloads: Arc::new(NoWorkloads),
        limiter: limit::Limiter::default(),
    }
}

fn peer(ip: &str) -> SocketAddr {
    format!("{ip}:40000").parse().unwrap()
}

fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn tokens_authenticate_and_anything_else_is_401() {
    let dir = tempfile::tempdir().unwrap();
    let token =
        super::super::approvers::add(&dir.path().join("approvers.json"), "alice", &["dba".into()])
            .unwrap();
    let a = api(dir.path(), None);
    let auth =
        |h: HeaderMap| a.authenticate(peer("192.0.2.1"), &Method::GET, "/api/v1/approvals", &h);
    let c = auth(with(&[("authorization", &format!("Bearer {token}"))])).unwrap();
    assert_eq!(c.user.as_deref(), Some("alice"));
    assert_eq!(c.auth, Auth::Token);
    assert_eq!(c.groups, ["dba"]);
    assert_eq!(c.remote.as_deref(), Some("192.0.2.1:40000"));
    assert_eq!(c.uid, None);
    for bad in [
        with(&[]),
        with(&[("authorization", "Bearer pgw_nope")]),
        with(&[("authorization", &format!("Basic {token}"))]),
        with(&[("authorization", "Bearer ")]),
    ] {
        assert_eq!(
            auth(bad).err().map(|r| r.status),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
}

#[test]
fn the_proxy_header_counts_only_from_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let a = api(
        dir.path(),
        Some(TrustedHeader {
            user: "x-forwarded-user".into(),
            groups: Some("x-forwarded-groups".into()),
            from: vec!["127.0.0.1".parse().unwrap()],
        }),
    );
    let h = with(&[
        ("x-forwarded-user", "carol@example.com"),
        ("x-forwarded-groups", "dba, ops,bad group"),
    ]);
    let c = a
        .authenticate(peer("127.0.0.1"), &Method::GET, "/", &h)
        .unwrap();
    assert_eq!(c.user.as_deref(), Some("carol@example.com"));
    assert_eq!(c.auth, Auth::Header);
    assert_eq!(c.groups, ["dba", "ops"]);
    // The same header from anywhere else proves nothing.
    assert!(
        a.authenticate(peer("192.0.2.9"), &Method::GET, "/", &h)
            .is_err()
    );
    // A token that does not match is refused even from the proxy.
    let mut h2 = h.clone();
    h2.insert("authorization", HeaderValue::from_static("Bearer pgw_nope"));
    assert!(
        a.authenticate(peer("127.0.0.1"), &Method::GET, "/", &h2)
            .is_err()
    );
}

#[test]
fn state_changes_must_be_json_and_same_origin() {
    let json = ("content-type", "application/json");
    let host = ("host", "pgw.example:9188");
    assert!(same_origin(&with(&[json, host]), true).is_ok());
    assert!(
        same_origin(
            &with(&[json, host, ("origin", "https://pgw.example:9188")]),
            true
        )
        .is_ok()
    );
    let cross = same_origin(
        &with(&[json, host, ("origin", "https://evil.example")]),
        true,
    );
    assert_eq!(cross.err().map(|r| r.status), Some(StatusCode::FORBIDDEN));
    let form = same_origin(
        &with(&[("content-type", "application/x-www-form-urlencoded"), host]),
        true,
    );
    assert_eq!(
        form.err().map(|r| r.status),
        Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    );
    assert!(same_origin(&with(&[host]), false).is_ok());
}
