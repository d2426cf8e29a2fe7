//! Arbitrary bytes through pgwarden's protocol decoder, as a client or a server could send them:
//! the startup phase, then whole frames from either side, each decoded by its typed view. No
//! input may panic, a frame must consume exactly its own bytes, and "need more" must not.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgwarden::session::strip_channel_binding;
use pgwarden::wire::startup::{self, Startup};
use pgwarden::wire::{Frame, Limits, Side, backend, encode, frontend, next_frame};

/// Small limits, so over-limit lengths are easy to reach.
const LIMITS: Limits = Limits {
    default: 256,
    frontend_large: 1024,
    backend_large: 2048,
    startup: 512,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    // Bits 0-5: read size (1 to 64 bytes at a time, so frames arrive in pieces); bit 6: start
    // with the startup phase (otherwise the input is all typed frames, which keeps the fuzzer
    // from spending its time finding a valid startup packet first).
    let chunk = usize::from(control & 0x3f) + 1;
    let rest = if control & 0x40 != 0 {
        startup_phase(input, chunk)
    } else {
        Some(input)
    };
    if let Some(rest) = rest {
        frames(rest, chunk, Side::Frontend);
        frames(rest, chunk, Side::Backend);
    }
});

/// Feeds `input` `chunk` bytes at a time to `next_startup` until a StartupMessage (returns what
/// follows it), a CancelRequest, an error, or the end.
fn startup_phase(input: &[u8], chunk: usize) -> Option<&[u8]> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        let before = buf.clone();
        match startup::next_startup(&mut buf, LIMITS.startup) {
            Ok(Some(msg)) => {
                let used = before.len() - buf.len();
                assert!(used >= 8, "a startup message of {used} bytes");
                assert!(used <= LIMITS.startup, "over the startup limit");
                assert_eq!(&before[used..], &buf[..], "consumed more than the message");
                let _ = (msg.param("user"), msg.param("database"));
                match msg {
                    Startup::Ssl | Startup::GssEnc => {}
                    Startup::Cancel { key, raw, .. } => {
                        assert_eq!(raw.len(), used);
                        assert!((4..=256).contains(&key.len()));
                        return None;
                    }
                    Startup::Params { raw, params, .. } => {
                        assert_eq!(raw.len(), used);
                        assert!(params.iter().all(|(name, _)| !name.is_empty()));
                        // What the session relays next: the unread bytes, then the rest.
                        return Some(&input[fed - buf.len()..]);
                    }
                }
            }
            Ok(None) => {
                assert_eq!(before, buf, "`need more` changed the buffer");
                if fed == input.len() {
                    return None;
                }
                let end = (fed + chunk).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Err(_) => return None,
        }
    }
}

/// Feeds `input` `chunk` bytes at a time to `next_frame` for `side`, decoding every frame,
/// until an error or the end.
fn frames(input: &[u8], chunk: usize, side: Side) {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        let before = buf.clone();
        match next_frame(&mut buf, &LIMITS, side) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                assert!(used >= 5, "a frame of {used} bytes");
                assert_eq!(frame.bytes.len(), used);
                assert_eq!(&before[..used], &frame.bytes[..]);
                assert_eq!(frame.tag, frame.bytes[0]);
                let len = i32::from_be_bytes([
                    frame.bytes[1],
                    frame.bytes[2],
                    frame.bytes[3],
                    frame.bytes[4],
                ]);
                assert_eq!(usize::try_from(len).ok(), Some(used - 1));
                assert!(used - 1 <= LIMITS.max(side, frame.tag), "over the limit");
                match side {
                    Side::Frontend => decode_frontend(&frame),
                    Side::Backend => decode_backend(&frame),
                }
            }
            Ok(None) => {
                assert_eq!(before, buf, "`need more` changed the buffer");
                if fed == input.len() {
                    return;
                }
                let end = (fed + chunk).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            Err(_) => return,
        }
    }
}

fn decode_frontend(frame: &Frame) {
    let Ok(msg) = frontend::decode(frame) else {
        return;
    };
    match msg {
        // What pgwarden would send in a statement's place parses back to the same text.
        frontend::FrontendMsg::Query(sql) => {
            let again = reparse(&encode::query(sql), Side::Frontend);
            assert_eq!(
                frontend::decode(&again),
                Ok(frontend::FrontendMsg::Query(sql))
            );
        }
        frontend::FrontendMsg::Parse { name, sql } => {
            let again = reparse(&encode::parse(name, sql), Side::Frontend);
            assert_eq!(
                frontend::decode(&again),
                Ok(frontend::FrontendMsg::Parse { name, sql })
            );
        }
        frontend::FrontendMsg::Bind { result_formats, .. } => {
            assert!(result_formats.len() <= frame.body().len() / 2);
        }
        frontend::FrontendMsg::Describe { kind, .. }
        | frontend::FrontendMsg::Close { kind, .. } => {
            assert!(kind == b'S' || kind == b'P');
        }
        frontend::FrontendMsg::Execute { .. }
        | frontend::FrontendMsg::FunctionCall { .. }
        | frontend::FrontendMsg::Other(_) => {}
    }
}

fn decode_backend(frame: &Frame) {
    let body = frame.body();
    match frame.tag {
        b'T' => {
            if let Ok(cols) = backend::row_description(frame) {
                // Each column takes at least 19 bytes (an empty name's NUL and 18 fixed).
                assert!(cols.len() * 19 <= body.len());
            }
        }
        b'D' => {
            if let Ok(values) = backend::data_row(frame) {
                for range in values.into_iter().flatten() {
                    assert!(range.start <= range.end && range.end <= body.len());
                }
            }
        }
        b'C' => {
            let _ = backend::command_complete(frame);
        }
        b'Z' => {
            if let Ok(status) = backend::ready_for_query(frame) {
                assert!(matches!(status, b'I' | b'T' | b'E'));
            }
        }
        b'E' | b'N' => {
            if let Ok(fields) = backend::error_fields(frame) {
                assert!(fields.iter().all(|(code, _)| *code != 0));
            }
        }
        b'K' => {
            if let Ok((_, key)) = backend::backend_key(frame) {
                assert!((4..=256).contains(&key.len()));
            }
        }
        b'S' => {
            let _ = backend::parameter_status(frame);
        }
        b'R' => {
            if let Ok((code, data)) = backend::authentication(frame)
                && code == backend::AUTH_SASL
            {
                let _ = backend::sasl_mechanisms(data);
            }
            // The rewritten offer is a valid frame with no channel-binding mechanism left.
            if let Some(stripped) = strip_channel_binding(frame) {
                let again = reparse(&stripped, Side::Backend);
                let (code, data) = backend::authentication(&again).expect("our own offer");
                assert_eq!(code, backend::AUTH_SASL);
                let mechs = backend::sasl_mechanisms(data).expect("our own offer");
                assert!(mechs.iter().all(|m| !m.ends_with("-PLUS")));
            }
        }
        _ => {}
    }
}

/// Parses bytes pgwarden built back into exactly one frame (with default limits: what we write
/// may be up to the size of what we read).
fn reparse(bytes: &[u8], side: Side) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = next_frame(&mut buf, &Limits::default(), side)
        .expect("pgwarden's own message parses")
        .expect("pgwarden's own message is whole");
    assert!(buf.is_empty(), "pgwarden's own message has trailing bytes");
    frame
}
