//! The messages pgwarden writes itself: errors, ReadyForQuery, rewritten authentication
//! offers, and the frame builder they share.
use bytes::{BufMut as _, Bytes, BytesMut};

use super::Frame;

/// Builds a frame of type `tag` whose body `body` writes.
pub fn frame(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut b = BytesMut::with_capacity(64);
    b.put_u8(tag);
    b.put_i32(0);
    body(&mut b);
    let len = i32::try_from(b.len() - 1).unwrap_or(i32::MAX);
    b[1..5].copy_from_slice(&len.to_be_bytes());
    Frame {
        tag,
        bytes: b.freeze(),
    }
}

/// Appends a NUL-terminated string (NULs inside are dropped: they cannot be sent).
pub fn cstr(b: &mut BytesMut, s: &str) {
    b.extend(s.bytes().filter(|&c| c != 0));
    b.put_u8(0);
}

/// The fields of an error pgwarden sends.
#[derive(Clone, Copy, Debug)]
pub struct ErrorFields<'a> {
    /// `ERROR` or `FATAL`.
    pub severity: &'a str,
    /// SQLSTATE.
    pub code: &'a str,
    /// Primary message.
    pub message: &'a str,
    /// Detail.
    pub detail: Option<&'a str>,
    /// Hint.
    pub hint: Option<&'a str>,
}

/// An ErrorResponse.
pub fn error_response(e: &ErrorFields<'_>) -> Bytes {
    fields_message(b'E', e)
}

fn fields_message(tag: u8, e: &ErrorFields<'_>) -> Bytes {
    frame(tag, |b| {
        for (code, value) in [
            (b'S', Some(e.severity)),
            (b'V', Some(e.severity)),
            (b'C', Some(e.code)),
            (b'M', Some(e.message)),
            (b'D', e.detail),
            (b'H', e.hint),
        ] {
            if let Some(v) = value {
                b.put_u8(code);
                cstr(b, v);
            }
        }
        b.put_u8(0);
    })
    .bytes
}

/// ReadyForQuery with transaction status `status`.
pub fn ready_for_query(status: u8) -> Bytes {
    frame(b'Z', |b| b.put_u8(status)).bytes
}

/// An AuthenticationSASL message offering `mechanisms`.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    frame(b'R', |b| {
        b.put_i32(super::backend::AUTH_SASL);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    })
    .bytes
}

/// A simple Query.
pub fn query(sql: &str) -> Bytes {
    frame(b'Q', |b| cstr(b, sql)).bytes
}

/// A Parse of `sql` as statement `name`, with no parameter types.
pub fn parse(name: &str, sql: &str) -> Bytes {
    frame(b'P', |b| {
        cstr(b, name);
        cstr(b, sql);
        b.put_i16(0);
    })
    .bytes
}

/// A Bind of statement `statement` to portal `portal`: no parameters, text results.
pub fn bind(portal: &str, statement: &str) -> Bytes {
    frame(b'B', |b| {
        cstr(b, portal);
        cstr(b, statement);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    })
    .bytes
}

/// An Execute of `portal`, all rows.
pub fn execute(portal: &str) -> Bytes {
    frame(b'E', |b| {
        cstr(b, portal);
        b.put_i32(0);
    })
    .bytes
}

/// A Close of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Bytes {
    frame(b'C', |b| {
        b.put_u8(kind);
        cstr(b, name);
    })
    .bytes
}

/// A Flush.
pub fn flush() -> Bytes {
    frame(b'H', |_| {}).bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Limits, Side, next_frame};

    #[test]
    fn built_frames_parse_back() {
        for bytes in [
            error_response(&ErrorFields {
                severity: "FATAL",
                code: "08004",
                message: "m",
                detail: None,
                hint: Some("h"),
            }),
            ready_for_query(b'T'),
            auth_sasl(&["SCRAM-SHA-256"]),
        ] {
            let mut buf = BytesMut::from(&bytes[..]);
            let f = next_frame(&mut buf, &Limits::default(), Side::Backend)
                .unwrap()
                .unwrap();
            assert_eq!(f.bytes, bytes);
            assert!(buf.is_empty());
        }
        for bytes in [query("select 1"), parse("s", "select 2")] {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(
                next_frame(&mut buf, &Limits::default(), Side::Frontend)
                    .unwrap()
                    .is_some()
            );
        }
    }
}
