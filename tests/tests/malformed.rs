//! Malformed input from a tagged workload: raw sockets (python3 in the tagged cgroup) send
//! PostgreSQL's real address garbage, impossible lengths, unknown message types and messages
//! over the configured limits, before and after a valid startup. Each bad session ends with
//! the right SQLSTATE (or a plain close where there is nothing to answer) and a log line,
//! while the agent keeps running and a healthy session in the same cgroup is untouched.
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use pgwarden_e2e::{
    TestCgroup, World, allow_all_workload, in_cgroup, run_output, unique_name, world_with_config,
};
use serde_json::Value;

/// One bad client per case, each on its own connection. Prints one JSON object: for each case,
/// the local port it used, the messages it received after its bad input (type, and SQLSTATE
/// and message of errors) and how the connection ended (`eof`, `reset` or `timeout`).
const CLIENT: &str = r#"
import json, socket, struct, sys

HOST, PORT = sys.argv[1], int(sys.argv[2])

def startup():
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    return struct.pack("!i", len(body) + 4) + body

def typed(tag, length, body=b""):
    return tag + struct.pack("!i", length) + body

def parse(data):
    out = []
    while len(data) >= 5:
        n = struct.unpack("!i", data[1:5])[0]
        if n < 4 or len(data) < 1 + n:
            out.append({"type": "partial", "bytes": len(data)})
            return out
        tag, body, data = chr(data[0]), data[5:1 + n], data[1 + n:]
        m = {"type": tag}
        if tag in "EN":
            for part in body.split(b"\0"):
                if part:
                    m[chr(part[0])] = part[1:].decode("utf-8", "replace")
        out.append(m)
    if data:
        out.append({"type": "partial", "bytes": len(data)})
    return out

def drain(s):
    data, end = b"", "eof"
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            end = "reset"
            break
        except socket.timeout:
            end = "timeout"
            break
        if not chunk:
            break
        data += chunk
    return data, end

def until_ready(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("closed before ReadyForQuery: %r" % data)
        data += chunk
        msgs = parse(data)
        if any(m["type"] == "E" for m in msgs):
            raise SystemExit("error during startup: %r" % msgs)
        if msgs and msgs[-1]["type"] == "Z":
            return

def open_case(before_startup=None, after_startup=None, half_close=False):
    s = socket.create_connection((HOST, PORT), timeout=10)
    if after_startup is not None:
        s.sendall(startup())
        until_ready(s)
        s.sendall(after_startup)
    else:
        s.sendall(before_startup)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    return s

def finish(s):
    port = s.getsockname()[1]
    data, end = drain(s)
    s.close()
    return {"port": port, "received": parse(data), "end": end}

def case(**kwargs):
    return finish(open_case(**kwargs))

# Opened first and read last: the agent's startup timeout runs while the other cases do.
stalled = open_case(before_startup=startup()[:6])
results = {
    "http": case(before_startup=b"GET / HTTP/1.1\r\nHost: db\r\n\r\n"),
    "truncated_startup": case(before_startup=startup()[:11], half_close=True),
    "huge_startup": case(before_startup=struct.pack("!iI", 2**31 - 1, 196608)),
    "unknown_type": case(after_startup=typed(b"z", 4)),
    "length_3": case(after_startup=typed(b"Q", 3)),
    "negative_length": case(after_startup=typed(b"Q", -5)),
    "too_long_query": case(after_startup=typed(b"Q", 2 * 1024 * 1024 + 4)),
    "too_long_sync": case(after_startup=typed(b"S", 65536 + 1)),
    "truncated_query": case(after_startup=typed(b"Q", 100, b"select 1"), half_close=True),
}
results["stalled_startup"] = finish(stalled)
print(json.dumps(results))
"#;

/// Limits small enough to cross cheaply, and a short startup timeout for the stalled case.
const LIMITS: &str =
    "limits:\n  statement_bytes: 1048576\n  message_bytes: 65536\n  startup_timeout_seconds: 2\n";

#[test]
fn malformed_input_ends_only_its_own_session() {
    let cg = TestCgroup::create(&unique_name("pgw-e2e-malformed"));
    let w = world_with_config(&allow_all_workload("e2e-malformed", &cg), LIMITS);

    // A healthy session in the same cgroup, busy while the bad ones come and go.
    let healthy = spawn(&mut w.psql(Some(&cg), "127.0.0.1", "select pg_sleep(3), 1"));
    let healthy_session = w.session_of(healthy.id());

    let out = run_output(in_cgroup(&cg.path, "python3").args([
        "-c",
        CLIENT,
        "127.0.0.1",
        &w.pg.port.to_string(),
    ]));
    assert!(
        out.status.success(),
        "the raw client failed: {}\nstdout: {}\nstderr: {}\n--- agent log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.agent.log()
    );
    let results: Value = serde_json::from_slice(&out.stdout).expect("the client prints JSON");

    // (case, the SQLSTATE of the FATAL error the client gets or None for a bare close, what
    // the error and the agent's log line say).
    let cases = [
        // Before startup: pgwarden answers as PostgreSQL would, or closes when the client
        // did not finish its packet.
        (
            "http",
            Some("08P01"),
            "invalid startup packet: startup packet of 1195725856 bytes exceeds",
        ),
        (
            "huge_startup",
            Some("08P01"),
            "startup packet of 2147483647 bytes exceeds the limit of 10000",
        ),
        (
            "truncated_startup",
            None,
            "client closed the connection during startup",
        ),
        ("stalled_startup", None, "startup timed out after 2s"),
        // After startup: the relay ends the session with its reason, and nothing of the bad
        // message reaches the server.
        ("unknown_type", Some("08P01"), "unknown message type 0x7a"),
        (
            "length_3",
            Some("08P01"),
            "message 'Q' declares an impossible length 3",
        ),
        ("negative_length", Some("08P01"), "impossible length -5"),
        (
            "too_long_query",
            Some("54000"),
            "message 'Q' of 2097156 bytes exceeds the limit of 1048576 bytes",
        ),
        (
            "too_long_sync",
            Some("54000"),
            "message 'S' of 65537 bytes exceeds the limit of 65536 bytes",
        ),
        // A message cut short by the client's close: nothing to answer, nothing forwarded.
        ("truncated_query", None, "session end"),
    ];
    for (case, sqlstate, text) in cases {
        match sqlstate {
            Some(code) => expect_error(&w, &results, case, code, text),
            None => expect_closed(&w, &results, case, text),
        }
    }

    // The agent is alive, and the healthy session went on undisturbed.
    let status = w.agent.status();
    assert!(status["sessions"].is_array(), "{status:#}");
    let out = healthy.wait_with_output().expect("wait for psql");
    assert!(
        out.status.success(),
        "the healthy session failed: {}\nstdout: {}\nstderr: {}\n--- agent log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.agent.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "|1");
    // Sessions log their end before they leave the registry.
    w.wait_no_sessions();
    let healthy_id = healthy_session["id"].as_str().expect("session id");
    assert!(
        w.agent
            .log()
            .lines()
            .any(|l| l.contains(healthy_id) && l.contains("session end") && !l.contains("WARN")),
        "the healthy session did not end cleanly\n--- agent log ---\n{}",
        w.agent.log()
    );
    // The pg log: the server never saw the bad messages (no protocol complaint from it).
    assert!(
        !w.pg.log().contains("invalid frontend message type"),
        "a bad message reached the server:\n{}",
        w.pg.log()
    );
}

fn spawn(cmd: &mut std::process::Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

/// The client of `case` got exactly one message, a FATAL ErrorResponse with `sqlstate` whose
/// text contains `text`, then an orderly close; the agent logged why.
#[track_caller]
fn expect_error(w: &World, results: &Value, case: &str, sqlstate: &str, text: &str) {
    let r = &results[case];
    let errors: Vec<&Value> = r["received"]
        .as_array()
        .expect("received")
        .iter()
        .filter(|m| m["type"] != "R" && m["type"] != "S" && m["type"] != "K" && m["type"] != "Z")
        .collect();
    assert!(
        errors.len() == 1
            && errors[0]["type"] == "E"
            && errors[0]["S"] == "FATAL"
            && errors[0]["C"] == sqlstate
            && errors[0]["M"].as_str().is_some_and(|m| m.contains(text)),
        "{case}: expected one FATAL {sqlstate} error mentioning {text:?}, got {r:#}\n\
         --- agent log ---\n{}",
        w.agent.log()
    );
    assert_eq!(r["end"], "eof", "{case}: {r:#}");
    expect_logged(w, case, r, text);
}

/// The client of `case` got nothing and saw the connection closed; the agent logged `text` for it.
#[track_caller]
fn expect_closed(w: &World, results: &Value, case: &str, text: &str) {
    let r = &results[case];
    assert!(
        r["received"].as_array().is_some_and(Vec::is_empty) && r["end"] == "eof",
        "{case}: expected a close and nothing else, got {r:#}\n--- agent log ---\n{}",
        w.agent.log()
    );
    expect_logged(w, case, r, text);
}

/// The agent log has a line containing `text` for the session of the client that used the
/// local port of `r`: found by its client address, or by the session id its `session start`
/// line gives that address. Waits briefly: the agent logs as the session ends.
#[track_caller]
fn expect_logged(w: &World, case: &str, r: &Value, text: &str) {
    let client = format!("client=127.0.0.1:{}", r["port"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = w.agent.log();
        let session = log
            .lines()
            .find(|l| l.contains(&client))
            .and_then(|l| l.split("session=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned);
        let found = log.lines().any(|l| {
            l.contains(text)
                && (l.contains(&client) || session.as_deref().is_some_and(|s| l.contains(s)))
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: no log line containing {text:?} for {client} (session {session:?})\n\
             --- agent log ---\n{log}"
        );
        sleep(Duration::from_millis(50));
    }
}
