use super::*;

fn account(methods: &[Method], policy: UserPolicy, file: PathBuf) -> Arc<Account> {
    account_binding(methods, policy, file, super::ChannelBindingMode::Prefer)
}

fn account_binding(
    methods: &[Method],
    policy: UserPolicy,
    file: PathBuf,
    channel_binding: super::ChannelBindingMode,
) -> Arc<Account> {
    Arc::new(Account {
        workload: "mcp".into(),
        user: "mcp_role".into(),
        password_file: Some(file),
        client_cert: None,
        client_token: None,
        user_policy: policy,
        servers: Servers {
            tcp: vec![crate::dest::Destination::parse("127.0.0.1:5432").unwrap()],
            unix: vec!["/run/postgresql/.s.PGSQL.5432".into()],
        },
        methods: methods.to_vec(),
        channel_binding,
    })
}

fn login(methods: &[Method]) -> Login {
    let a = account(methods, UserPolicy::Force, PathBuf::new());
    Login::new(a, Some(Secret(Zeroizing::new(b"pa55word".to_vec()))), None)
}

fn sasl_offer(mechs: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for m in mechs {
        v.extend_from_slice(m.as_bytes());
        v.push(0);
    }
    v.push(0);
    v
}

#[test]
fn admits_only_the_configured_servers_and_user() {
    let a = account(
        &[Method::ScramSha256],
        UserPolicy::MustMatch,
        PathBuf::new(),
    );
    let tcp = SockAddr::Inet("127.0.0.1:5432".parse().unwrap());
    let rogue = SockAddr::Inet("127.0.0.1:6543".parse().unwrap());
    let sock = SockAddr::Unix("/run/postgresql/.s.PGSQL.5432".into());
    let other_sock = SockAddr::Unix("/tmp/.s.PGSQL.5432".into());
    assert_eq!(a.admit("mcp_role", &tcp).unwrap().server, tcp);
    assert_eq!(a.admit("mcp_role", &sock).unwrap().server, sock);
    assert!(matches!(
        a.admit("mcp_role", &rogue),
        Err(LoginError::Server { .. })
    ));
    assert!(matches!(
        a.admit("mcp_role", &other_sock),
        Err(LoginError::Server { .. })
    ));
    let e = a.admit("postgres", &tcp).unwrap_err();
    assert!(matches!(e, LoginError::WrongUser { .. }));
    assert_eq!(e.sqlstate(), "28000");
    let f = account(&[Method::ScramSha256], UserPolicy::Force, PathBuf::new());
    let info = f.admit("postgres", &tcp).unwrap();
    assert_eq!(
        (info.user.as_str(), info.asked_user.as_str()),
        ("mcp_role", "postgres")
    );
}

#[test]
fn reads_the_secret_without_its_newline_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let a = account(&[Method::ScramSha256], UserPolicy::Force, path.clone());
    assert!(matches!(a.read_secret(), Err(LoginError::Secret { .. })));
    std::fs::write(&path, "s3cret\n").unwrap();
    assert_eq!(&**a.read_secret().unwrap().unwrap().0, b"s3cret");
    std::fs::write(&path, "s3cret\r\n").unwrap();
    assert_eq!(&**a.read_secret().unwrap().unwrap().0, b"s3cret");
    for bad in [&b""[..], b"\n", b"a\0b", &[0xff, 0xfe][..]] {
        std::fs::write(&path, bad).unwrap();
        let e = a.read_secret().unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    std::fs::write(&path, vec![b'x'; 5000]).unwrap();
    assert!(a.read_secret().is_err());
    assert_eq!(
        format!("{:?}", Secret(Zeroizing::new(b"x".to_vec()))),
        "Secret(..)"
    );
}

#[test]
fn weak_methods_are_refused_unless_configured() {
    for (code, data) in [(3, &[][..]), (5, &[1, 2, 3, 4][..])] {
        let mut l = login(&[Method::ScramSha256]);
        let e = l.answer(code, data).unwrap_err();
        assert!(matches!(e, LoginError::Method { .. }), "{e}");
        assert!(!e.to_string().contains("pa55word"));
    }
    let mut l = login(&[Method::Md5]);
    let answer = l.answer(5, &[1, 2, 3, 4]).unwrap().unwrap();
    assert_eq!(answer[0], b'p');
    assert!(answer[5..].starts_with(b"md5"));
    assert!(!answer.windows(8).any(|w| w == b"pa55word"));
    assert_eq!(l.method_name(), "md5");
    // A second request after the secret went is not answered.
    assert!(l.answer(5, &[1, 2, 3, 4]).is_err());
    let mut l = login(&[Method::Password]);
    let answer = l.answer(3, &[]).unwrap().unwrap();
    assert!(answer.ends_with(b"pa55word\0"));
    for code in [2, 7, 9, 42] {
        assert!(login(&[Method::ScramSha256]).answer(code, &[]).is_err());
    }
}

#[test]
fn scram_needs_the_plain_mechanism_and_the_servers_proof() {
    let mut l = login(&[Method::ScramSha256]);
    assert!(l.answer(10, &sasl_offer(&["SCRAM-SHA-256-PLUS"])).is_err());

    let mut l = login(&[Method::ScramSha256]);
    let first = l
        .answer(10, &sasl_offer(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
        .unwrap()
        .unwrap();
    // p, length, "SCRAM-SHA-256\0", length, then the client-first message "n,,n=,r=NONCE".
    let body = &first[5..];
    let mech_end = body.iter().position(|b| *b == 0).unwrap();
    assert_eq!(&body[..mech_end], b"SCRAM-SHA-256");
    let client_first = std::str::from_utf8(&body[mech_end + 5..]).unwrap();
    assert!(client_first.starts_with("n,,"), "{client_first}");
    let nonce = client_first.rsplit_once("r=").unwrap().1;
    // An AuthenticationOk now would skip the server's proof.
    assert!(matches!(login_after_first(&mut l, nonce), Ok(())));
    let mut skipped = login(&[Method::ScramSha256]);
    let f = skipped
        .answer(10, &sasl_offer(&["SCRAM-SHA-256"]))
        .unwrap()
        .unwrap();
    let n = std::str::from_utf8(&f[5 + 14 + 4..])
        .unwrap()
        .rsplit_once("r=")
        .unwrap()
        .1
        .to_owned();
    login_after_first(&mut skipped, &n).unwrap();
    assert!(skipped.answer(0, &[]).is_err());
    // A server that does not know the secret cannot sign the final message.
    let bogus = format!("v={}", "A".repeat(43) + "=");
    assert!(matches!(
        l.answer(12, bogus.as_bytes()),
        Err(LoginError::Exchange { .. })
    ));
}

/// Sends a server-first message continuing the client's nonce.
fn login_after_first(l: &mut Login, nonce: &str) -> Result<(), LoginError> {
    let server_first = format!("r={nonce}srvnonce,s=c2FsdHNhbHQ=,i=4096");
    let answer = l.answer(11, server_first.as_bytes())?.unwrap();
    assert_eq!(answer[0], b'p');
    let client_final = std::str::from_utf8(&answer[5..]).unwrap();
    assert!(client_final.starts_with("c=biws,r="), "{client_final}");
    Ok(())
}

#[test]
fn a_certificate_only_role_answers_no_password_request_and_needs_tls() {
    let mut a = Arc::try_unwrap(account(
        &[Method::ScramSha256],
        UserPolicy::Force,
        PathBuf::new(),
    ))
    .unwrap();
    a.password_file = None;
    a.client_cert = Some(("/c.pem".into(), "/k.pem".into()));
    let a = Arc::new(a);
    assert!(a.read_secret().unwrap().is_none());
    let sock = SockAddr::Unix("/run/postgresql/.s.PGSQL.5432".into());
    assert!(matches!(
        a.admit("x", &sock),
        Err(LoginError::Server { .. })
    ));
    let mut l = Login::new(Arc::clone(&a), None, None);
    assert!(matches!(
        l.answer(10, &sasl_offer(&["SCRAM-SHA-256"])),
        Err(LoginError::Method { .. })
    ));
    assert_eq!(Login::new(a, None, None).method_name(), "trust");
}

#[test]
fn a_socket_is_matched_through_symlinks_and_reached_at_its_configured_path() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
    let configured = format!("{}/.s.PGSQL.5432", real.display());
    let mut a = Arc::try_unwrap(account(
        &[Method::ScramSha256],
        UserPolicy::Force,
        PathBuf::new(),
    ))
    .unwrap();
    a.servers.unix = vec![configured.clone()];
    let via_link = SockAddr::Unix(format!("{}/link/.s.PGSQL.5432", dir.path().display()));
    assert_eq!(a.serves(&via_link), Some(SockAddr::Unix(configured)));
    let elsewhere = SockAddr::Unix(format!("{}/.s.PGSQL.5432", dir.path().display()));
    assert_eq!(a.serves(&elsewhere), None);
    let missing = SockAddr::Unix("/nonexistent/dir/.s.PGSQL.5432".into());
    assert_eq!(a.serves(&missing), None);
}

#[test]
fn the_token_matches_only_itself() {
    let t = Secret(Zeroizing::new(b"tok-1".to_vec()));
    assert!(Account::token_matches(&t, b"tok-1\0"));
    assert!(Account::token_matches(&t, b"tok-1"));
    for wrong in [&b"tok-2\0"[..], b"tok-1x\0", b"\0", b""] {
        assert!(!Account::token_matches(&t, wrong));
    }
}

/// The mechanism and GS2 header of the SASLInitialResponse `first`.
fn initial(first: &[u8]) -> (String, String) {
    let body = &first[5..];
    let mech_end = body.iter().position(|b| *b == 0).unwrap();
    let mech = String::from_utf8(body[..mech_end].to_vec()).unwrap();
    let client_first = std::str::from_utf8(&body[mech_end + 5..]).unwrap();
    let header = client_first.split_once(",n=").unwrap().0.to_owned();
    (mech, header)
}

#[test]
fn scram_binds_to_the_tls_hop_when_it_can() {
    // A DER certificate skeleton signed with ecdsa-with-SHA256.
    let cert: &[u8] = &[
        0x30, 0x13, 0x30, 0x03, 0x02, 0x01, 0x01, 0x30, 0x0A, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE,
        0x3D, 0x04, 0x03, 0x02, 0x03, 0x02, 0x00, 0xFF,
    ];
    assert!(super::binding::server_end_point(cert).is_some());
    let both = sasl_offer(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    let plain_only = sasl_offer(&["SCRAM-SHA-256"]);
    let with = |mode: super::ChannelBindingMode, tls: Option<Option<&[u8]>>| {
        let a = account_binding(
            &[Method::ScramSha256],
            UserPolicy::Force,
            PathBuf::new(),
            mode,
        );
        let mut l = Login::new(a, Some(Secret(Zeroizing::new(b"pa55word".to_vec()))), None);
        if let Some(c) = tls {
            l.over_tls(c);
        }
        l
    };
    use super::ChannelBindingMode::{Disable, Prefer, Require};
    for (mode, tls, offer, want) in [
        (
            Prefer,
            Some(Some(cert)),
            &both,
            Some(("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,")),
        ),
        (
            Require,
            Some(Some(cert)),
            &both,
            Some(("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,")),
        ),
        // Over TLS with the offer stripped: "y", which a server that can bind rejects.
        (
            Prefer,
            Some(Some(cert)),
            &plain_only,
            Some(("SCRAM-SHA-256", "y,")),
        ),
        (Prefer, None, &both, Some(("SCRAM-SHA-256", "n,"))),
        // A certificate without a single hash: nothing to bind to.
        (Prefer, Some(None), &both, Some(("SCRAM-SHA-256", "n,"))),
        (
            Disable,
            Some(Some(cert)),
            &both,
            Some(("SCRAM-SHA-256", "n,")),
        ),
        (Require, None, &both, None),
        (Require, Some(Some(cert)), &plain_only, None),
        (Require, Some(None), &both, None),
    ] {
        let mut l = with(mode, tls);
        match (l.answer(10, offer), want) {
            (Ok(Some(first)), Some((mech, header))) => {
                assert_eq!(
                    initial(&first),
                    (mech.to_owned(), header.to_owned()),
                    "{mode:?}"
                );
                let name = if mech.ends_with("PLUS") {
                    "scram-sha-256-plus"
                } else {
                    "scram-sha-256"
                };
                assert_eq!(l.method_name(), name);
            }
            (Err(e), None) => assert!(e.to_string().contains("channel_binding is require"), "{e}"),
            (got, want) => panic!(
                "{mode:?} {tls:?}: got {:?}, want {want:?}",
                got.map(|a| a.map(|a| a.to_vec()))
            ),
        }
    }
}
