//! Typed views of the client's messages, for the layers that decide on statements.
use super::{Frame, Reader, WireError};

/// A Bind's result format codes: one or a few in practice, kept inline (no allocation per
/// Bind).
pub type Formats = smallvec::SmallVec<[i16; 4]>;

/// A client message, decoded as far as later layers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrontendMsg<'a> {
    /// Simple query: one or more statements.
    Query(&'a str),
    /// Extended protocol: prepare `sql` as statement `name` ("" is unnamed).
    Parse {
        /// Statement name.
        name: &'a str,
        /// Statement text.
        sql: &'a str,
    },
    /// Bind `statement` into `portal`, with the result format codes.
    Bind {
        /// Portal name.
        portal: &'a str,
        /// Statement name.
        statement: &'a str,
        /// Result column format codes (0 text, 1 binary; one code applies to all).
        result_formats: Formats,
    },
    /// Describe a statement (`b'S'`) or portal (`b'P'`).
    Describe {
        /// `S` or `P`.
        kind: u8,
        /// Name.
        name: &'a str,
    },
    /// Run a portal.
    Execute {
        /// Portal name.
        portal: &'a str,
        /// Row limit, 0 for all.
        max_rows: i32,
    },
    /// Close a statement (`b'S'`) or portal (`b'P'`).
    Close {
        /// `S` or `P`.
        kind: u8,
        /// Name.
        name: &'a str,
    },
    /// Fast-path function call by OID.
    FunctionCall {
        /// Function OID.
        oid: u32,
    },
    /// Sync, Flush, Terminate, CopyData, CopyDone, CopyFail, password/SASL: relayed as they are.
    Other(u8),
}

/// Decodes a client frame.
pub fn decode(frame: &Frame) -> Result<FrontendMsg<'_>, WireError> {
    let mut r = Reader::new(frame.body());
    Ok(match frame.tag {
        b'Q' => FrontendMsg::Query(r.cstr()?),
        b'P' => FrontendMsg::Parse {
            name: r.cstr()?,
            sql: r.cstr()?,
        },
        b'B' => {
            let portal = r.cstr()?;
            let statement = r.cstr()?;
            let n = r.count16()?;
            r.bytes(n * 2)?;
            let n = r.count16()?;
            for _ in 0..n {
                let len = r.i32()?;
                if len > 0 {
                    r.bytes(
                        usize::try_from(len)
                            .map_err(|_| WireError::Malformed("bad parameter length"))?,
                    )?;
                } else if len < -1 {
                    return Err(WireError::Malformed("bad parameter length"));
                }
            }
            let n = r.count16()?;
            let mut result_formats = Formats::new();
            for _ in 0..n {
                result_formats.push(r.i16()?);
            }
            FrontendMsg::Bind {
                portal,
                statement,
                result_formats,
            }
        }
        b'D' => FrontendMsg::Describe {
            kind: kind(&mut r)?,
            name: r.cstr()?,
        },
        b'E' => FrontendMsg::Execute {
            portal: r.cstr()?,
            max_rows: r.i32()?,
        },
        b'C' => FrontendMsg::Close {
            kind: kind(&mut r)?,
            name: r.cstr()?,
        },
        b'F' => FrontendMsg::FunctionCall { oid: r.u32()? },
        tag => FrontendMsg::Other(tag),
    })
}

fn kind(r: &mut Reader<'_>) -> Result<u8, WireError> {
    match r.u8()? {
        k @ (b'S' | b'P') => Ok(k),
        _ => Err(WireError::Malformed(
            "Describe/Close kind must be 'S' or 'P'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode;

    #[test]
    fn round_trips_the_extended_protocol() {
        let f = encode::frame(b'P', |b| {
            encode::cstr(b, "s1");
            encode::cstr(b, "select $1");
            b.extend_from_slice(&0i16.to_be_bytes());
        });
        assert_eq!(
            decode(&f).unwrap(),
            FrontendMsg::Parse {
                name: "s1",
                sql: "select $1"
            }
        );
        let f = encode::frame(b'B', |b| {
            encode::cstr(b, "p");
            encode::cstr(b, "s1");
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&2i16.to_be_bytes());
            b.extend_from_slice(&3i32.to_be_bytes());
            b.extend_from_slice(b"abc");
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
        });
        assert_eq!(
            decode(&f).unwrap(),
            FrontendMsg::Bind {
                portal: "p",
                statement: "s1",
                result_formats: smallvec::smallvec![1]
            }
        );
        let f = encode::frame(b'E', |b| {
            encode::cstr(b, "p");
            b.extend_from_slice(&10i32.to_be_bytes());
        });
        assert_eq!(
            decode(&f).unwrap(),
            FrontendMsg::Execute {
                portal: "p",
                max_rows: 10
            }
        );
        let f = encode::frame(b'D', |b| {
            b.extend_from_slice(b"X");
            encode::cstr(b, "p");
        });
        assert!(decode(&f).is_err());
        let f = encode::frame(b'B', |b| {
            encode::cstr(b, "p");
            encode::cstr(b, "s");
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&100i32.to_be_bytes());
        });
        assert!(decode(&f).is_err(), "parameter longer than the message");
    }
}
