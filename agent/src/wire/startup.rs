//! The untyped first messages of a connection: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage (protocol 3.0 or 3.2).
use bytes::{Bytes, BytesMut};

use super::{Reader, WireError};

/// Request code of SSLRequest.
pub const SSL_REQUEST: u32 = 80_877_103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;

/// One startup-phase message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// The client asks for TLS.
    Ssl,
    /// The client asks for GSSAPI encryption.
    GssEnc,
    /// Cancel the query running on backend `pid` (the key is 4 bytes in 3.0, up to 256 in 3.2).
    Cancel {
        /// Backend process id.
        pid: i32,
        /// Secret key.
        key: Bytes,
        /// The whole packet, to forward unchanged.
        raw: Bytes,
    },
    /// StartupMessage.
    Params {
        /// Requested protocol version (major << 16 | minor).
        version: u32,
        /// Parameters in order.
        params: Vec<(String, String)>,
        /// The whole packet, to forward unchanged.
        raw: Bytes,
    },
}

impl Startup {
    /// A startup parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Self::Params { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A StartupMessage of protocol `version` with `params`, in order (NULs inside names and
/// values are dropped: they cannot be sent).
pub fn encode_params(version: u32, params: &[(String, String)]) -> Bytes {
    use bytes::BufMut as _;
    let mut b = BytesMut::with_capacity(64);
    b.put_i32(0);
    b.put_u32(version);
    for (name, value) in params {
        super::encode::cstr(&mut b, name);
        super::encode::cstr(&mut b, value);
    }
    b.put_u8(0);
    let len = i32::try_from(b.len()).unwrap_or(i32::MAX);
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// Takes the next startup-phase message off `buf`; `Ok(None)` means more bytes are needed.
pub fn next_startup(buf: &mut BytesMut, max: usize) -> Result<Option<Startup>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i64::from(i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
    if len < 8 {
        return Err(WireError::BadLength { tag: 0, len });
    }
    let len = usize::try_from(len).map_err(|_| WireError::BadLength { tag: 0, len })?;
    if len > max {
        return Err(WireError::TooLong { tag: 0, len, max });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let raw = buf.split_to(len).freeze();
    let mut r = Reader::new(&raw[4..]);
    let code = r.u32()?;
    Ok(Some(match code {
        SSL_REQUEST | GSSENC_REQUEST => {
            r.finish()?;
            if code == SSL_REQUEST {
                Startup::Ssl
            } else {
                Startup::GssEnc
            }
        }
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let key = r.rest();
            if key.len() < 4 || key.len() > 256 {
                return Err(WireError::Malformed("cancel key must be 4 to 256 bytes"));
            }
            let key = raw.slice(raw.len() - key.len()..);
            Startup::Cancel { pid, key, raw }
        }
        version if version >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                params.push((name.to_owned(), r.cstr()?.to_owned()));
            }
            r.finish()?;
            Startup::Params {
                version,
                params,
                raw,
            }
        }
        _ => {
            return Err(WireError::Malformed(
                "unsupported protocol version in startup packet",
            ));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &[u8]) -> BytesMut {
        let mut v = (i32::try_from(body.len() + 4).unwrap())
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(body);
        BytesMut::from(&v[..])
    }

    #[test]
    fn parses_each_kind() {
        let mut b = packet(&SSL_REQUEST.to_be_bytes());
        assert_eq!(next_startup(&mut b, 10_000).unwrap(), Some(Startup::Ssl));
        let mut b = packet(&GSSENC_REQUEST.to_be_bytes());
        assert_eq!(next_startup(&mut b, 10_000).unwrap(), Some(Startup::GssEnc));

        let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
        body.extend_from_slice(&1234i32.to_be_bytes());
        body.extend_from_slice(&[9; 32]); // a 3.2-style long key
        let mut b = packet(&body);
        let Some(Startup::Cancel { pid, key, .. }) = next_startup(&mut b, 10_000).unwrap() else {
            panic!()
        };
        assert_eq!((pid, key.len()), (1234, 32));

        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0database\0db\0options\0-c role=x\0\0");
        let mut b = packet(&body);
        let s = next_startup(&mut b, 10_000).unwrap().unwrap();
        assert_eq!(s.param("user"), Some("alice"));
        assert_eq!(s.param("options"), Some("-c role=x"));
        assert_eq!(s.param("nope"), None);
    }

    #[test]
    fn encodes_what_it_parses() {
        let params = vec![
            ("user".to_owned(), "role".to_owned()),
            ("database".to_owned(), "db".to_owned()),
        ];
        let raw = encode_params(PROTOCOL_3_0, &params);
        let mut b = BytesMut::from(&raw[..]);
        let Some(Startup::Params {
            version,
            params: back,
            ..
        }) = next_startup(&mut b, 10_000).unwrap()
        else {
            panic!()
        };
        assert_eq!((version, back), (PROTOCOL_3_0, params));
        assert!(b.is_empty());
    }

    #[test]
    fn refuses_garbage() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(next_startup(&mut b, 10_000).is_err());
        let mut b = packet(&[0, 2, 0, 0]);
        assert!(next_startup(&mut b, 10_000).is_err());
        let mut b = BytesMut::from(&b"\x00\x01\x00\x00"[..]);
        assert!(matches!(
            next_startup(&mut b, 10_000),
            Err(WireError::TooLong { .. })
        ));
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice");
        assert!(next_startup(&mut packet(&body), 10_000).is_err());
    }
}
