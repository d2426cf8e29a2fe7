//! Splitting a byte stream into whole messages, with a hard maximum length per message type.
//! A frame keeps its bytes (header included), so relaying it unchanged copies nothing.
use bytes::{Bytes, BytesMut};

/// Which peer sent the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client (frontend messages).
    Frontend,
    /// The server (backend messages).
    Backend,
}

/// Maximum message lengths (the length field, which counts itself but not the type byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Any message not listed below.
    pub default: usize,
    /// Client messages carrying statements or data: Query, Parse, Bind, CopyData, FunctionCall.
    pub frontend_large: usize,
    /// Server messages carrying data: DataRow, CopyData, FunctionCallResponse.
    pub backend_large: usize,
    /// The untyped first message (startup, SSL, cancel).
    pub startup: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default: 1 << 20,
            frontend_large: 64 << 20,
            backend_large: 1 << 30,
            startup: 10_000,
        }
    }
}

impl Limits {
    /// The limit for message `tag` from `side`.
    pub fn max(&self, side: Side, tag: u8) -> usize {
        match (side, tag) {
            (Side::Frontend, b'Q' | b'P' | b'B' | b'd' | b'F') => self.frontend_large,
            (Side::Backend, b'D' | b'd' | b'V') => self.backend_large,
            _ => self.default,
        }
    }
}

/// One whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The type byte.
    pub tag: u8,
    /// The whole message: type byte, length, body.
    pub bytes: Bytes,
}

impl Frame {
    /// The body (after the type byte and length).
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Why the stream cannot be read further. Each ends the session it happened in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Longer than the limit for its type.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes", what = what(*.tag))]
    TooLong {
        /// Type byte (0 for the startup packet).
        tag: u8,
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A length field below its minimum.
    #[error("{what} declares an impossible length {len}", what = what(*.tag))]
    BadLength {
        /// Type byte.
        tag: u8,
        /// Declared length.
        len: i64,
    },
    /// A type byte this side never sends.
    #[error("unknown message type 0x{0:02x} from the {1:?}")]
    UnknownTag(u8, Side),
    /// A body that does not parse.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// How errors name a message: tag 0 is the untyped startup packet (a NUL must not reach a log
/// line or an ErrorResponse).
fn what(tag: u8) -> String {
    if tag == 0 {
        "startup packet".to_owned()
    } else {
        format!("message '{}'", char::from(tag))
    }
}

fn known(side: Side, tag: u8) -> bool {
    match side {
        // Bind, Close, CopyData, CopyDone, Describe, Execute, CopyFail, FunctionCall, Flush,
        // Parse, password/SASL, Query, Sync, Terminate.
        Side::Frontend => b"BCcDdEfFHPpQSX".contains(&tag),
        // Auth, BackendKeyData, BindComplete, CloseComplete, CommandComplete, CopyData,
        // CopyDone, CopyIn/Out/Both, DataRow, ErrorResponse, EmptyQuery, FunctionCallResponse,
        // NegotiateProtocolVersion, NoData, Notice, Notification, ParameterDescription,
        // ParameterStatus, ParseComplete, PortalSuspended, ReadyForQuery, RowDescription.
        Side::Backend => b"RK23CcdGHWDEIVvnNAtS1sZT".contains(&tag),
    }
}

/// Takes the next whole message off the front of `buf`; `Ok(None)` means more bytes are
/// needed. The declared length is checked against `limits` before anything is buffered
/// beyond the header, so a peer cannot make us allocate what it claims.
pub fn next_frame(
    buf: &mut BytesMut,
    limits: &Limits,
    side: Side,
) -> Result<Option<Frame>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    if !known(side, tag) {
        return Err(WireError::UnknownTag(tag, side));
    }
    let len = i64::from(i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
    if len < 4 {
        return Err(WireError::BadLength { tag, len });
    }
    let len = usize::try_from(len).map_err(|_| WireError::BadLength { tag, len })?;
    let max = limits.max(side, tag);
    if len > max {
        return Err(WireError::TooLong { tag, len, max });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        tag,
        bytes: buf.split_to(len + 1).freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_arrive_whole_in_any_split() {
        let stream = [msg(b'Q', b"select 1\0"), msg(b'S', b""), msg(b'X', b"")].concat();
        for split in 0..stream.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(f) =
                    next_frame(&mut buf, &Limits::default(), Side::Frontend).unwrap()
                {
                    got.push(f);
                }
            }
            assert_eq!(got.iter().map(|f| f.tag).collect::<Vec<_>>(), b"QSX");
            assert_eq!(got[0].body(), b"select 1\0");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn errors_name_the_startup_packet_without_a_nul() {
        let e = WireError::TooLong {
            tag: 0,
            len: 70_000,
            max: 10_000,
        };
        assert_eq!(
            e.to_string(),
            "startup packet of 70000 bytes exceeds the limit of 10000 bytes"
        );
        let e = WireError::BadLength { tag: b'Q', len: 3 };
        assert_eq!(e.to_string(), "message 'Q' declares an impossible length 3");
    }

    #[test]
    fn bad_input_is_refused_before_buffering() {
        let limits = Limits {
            default: 100,
            frontend_large: 1000,
            backend_large: 1000,
            startup: 100,
        };
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut buf, &limits, Side::Frontend),
            Err(WireError::TooLong { tag: b'Q', .. })
        ));
        let mut buf = BytesMut::from(&b"S\x00\x00\x01\x00"[..]);
        assert!(matches!(
            next_frame(&mut buf, &limits, Side::Frontend),
            Err(WireError::TooLong {
                tag: b'S',
                max: 100,
                ..
            })
        ));
        let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x03"[..]);
        assert_eq!(
            next_frame(&mut buf, &limits, Side::Frontend),
            Err(WireError::BadLength { tag: b'Q', len: 3 })
        );
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut buf, &limits, Side::Frontend),
            Err(WireError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&b"z\x00\x00\x00\x04"[..]);
        assert_eq!(
            next_frame(&mut buf, &limits, Side::Frontend),
            Err(WireError::UnknownTag(b'z', Side::Frontend))
        );
        // A RowDescription is a backend message only.
        let mut buf = BytesMut::from(&msg(b'T', b"\0\0")[..]);
        assert!(next_frame(&mut buf, &limits, Side::Frontend).is_err());
        let mut buf = BytesMut::from(&msg(b'T', b"\0\0")[..]);
        assert!(
            next_frame(&mut buf, &limits, Side::Backend)
                .unwrap()
                .is_some()
        );
    }
}
