//! Typed views of the server's messages, for the layers that watch results and errors.
use super::{Frame, Reader, WireError};

/// One column of a RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name (an alias, when one was given).
    pub name: String,
    /// OID of the table the column comes straight from, 0 otherwise.
    pub table_oid: u32,
    /// Attribute number in that table, 0 otherwise.
    pub attnum: i16,
    /// Data type OID.
    pub type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// Decodes a RowDescription ('T').
pub fn row_description(frame: &Frame) -> Result<Vec<Column>, WireError> {
    let mut r = Reader::new(frame.body());
    let n = r.count16()?;
    let mut cols = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let name = r.cstr()?.to_owned();
        let table_oid = r.u32()?;
        let attnum = r.i16()?;
        let type_oid = r.u32()?;
        let _type_len = r.i16()?;
        let _type_mod = r.i32()?;
        let format = r.i16()?;
        cols.push(Column {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    r.finish()?;
    Ok(cols)
}

/// The byte ranges of a DataRow's ('D') values within `frame.body()`; `None` is SQL NULL.
pub fn data_row(frame: &Frame) -> Result<Vec<Option<std::ops::Range<usize>>>, WireError> {
    let mut out = Vec::new();
    data_row_into(frame, &mut out)?;
    Ok(out)
}

/// [`data_row`] into `out` (emptied first), whose capacity is kept from row to row.
pub fn data_row_into(
    frame: &Frame,
    out: &mut Vec<Option<std::ops::Range<usize>>>,
) -> Result<(), WireError> {
    out.clear();
    let body = frame.body();
    let mut r = Reader::new(body);
    let n = r.count16()?;
    out.reserve(n.min(1600));
    for _ in 0..n {
        let len = r.i32()?;
        if len == -1 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| WireError::Malformed("bad value length"))?;
        let start = body.len() - r.rest().len();
        r.bytes(len)?;
        out.push(Some(start..start + len));
    }
    r.finish()?;
    Ok(())
}

/// The values of a DataRow's body (`frame.body()`), in order, without allocating; `None` is
/// SQL NULL. A body that does not decode ends the iteration early (what was read stands).
pub fn data_row_values(body: &[u8]) -> DataRowValues<'_> {
    let mut r = Reader::new(body);
    let left = r.count16().unwrap_or(0);
    DataRowValues { r, left }
}

/// The iterator of [`data_row_values`].
pub struct DataRowValues<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for DataRowValues<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let value = match self.r.i32() {
            Ok(-1) => None,
            Ok(len) => {
                let Ok(len) = usize::try_from(len) else {
                    self.left = 0;
                    return None;
                };
                match self.r.bytes(len) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.left = 0;
                        return None;
                    }
                }
            }
            Err(_) => {
                self.left = 0;
                return None;
            }
        };
        Some(value)
    }
}

/// The command tag of a CommandComplete ('C').
pub fn command_complete(frame: &Frame) -> Result<&str, WireError> {
    Reader::new(frame.body()).cstr()
}

/// The transaction status of a ReadyForQuery ('Z'): `I`, `T` or `E`.
pub fn ready_for_query(frame: &Frame) -> Result<u8, WireError> {
    let mut r = Reader::new(frame.body());
    let s = r.u8()?;
    r.finish()?;
    if matches!(s, b'I' | b'T' | b'E') {
        Ok(s)
    } else {
        Err(WireError::Malformed("bad transaction status"))
    }
}

/// The fields of an ErrorResponse ('E') or NoticeResponse ('N'), as (code, value).
pub fn error_fields(frame: &Frame) -> Result<Vec<(u8, &str)>, WireError> {
    let mut r = Reader::new(frame.body());
    let mut out = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        out.push((code, r.cstr()?));
    }
    r.finish()?;
    Ok(out)
}

/// BackendKeyData ('K'): backend pid and secret key (4 bytes in 3.0, up to 256 in 3.2).
pub fn backend_key(frame: &Frame) -> Result<(i32, &[u8]), WireError> {
    let mut r = Reader::new(frame.body());
    let pid = r.i32()?;
    let key = r.rest();
    if key.len() < 4 || key.len() > 256 {
        return Err(WireError::Malformed("backend key must be 4 to 256 bytes"));
    }
    Ok((pid, key))
}

/// ParameterStatus ('S'): name and value.
pub fn parameter_status(frame: &Frame) -> Result<(&str, &str), WireError> {
    let mut r = Reader::new(frame.body());
    let kv = (r.cstr()?, r.cstr()?);
    r.finish()?;
    Ok(kv)
}

/// The code of an Authentication ('R') message, and its data.
pub fn authentication(frame: &Frame) -> Result<(i32, &[u8]), WireError> {
    let mut r = Reader::new(frame.body());
    Ok((r.i32()?, r.rest()))
}

/// AuthenticationSASL's code.
pub const AUTH_SASL: i32 = 10;

/// The SASL mechanisms offered in an AuthenticationSASL message's data.
pub fn sasl_mechanisms(data: &[u8]) -> Result<Vec<&str>, WireError> {
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    loop {
        let m = r.cstr()?;
        if m.is_empty() {
            break;
        }
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode;

    #[test]
    fn decodes_rows_and_descriptions() {
        let f = encode::frame(b'T', |b| {
            b.extend_from_slice(&1i16.to_be_bytes());
            encode::cstr(b, "c");
            b.extend_from_slice(&16384u32.to_be_bytes());
            b.extend_from_slice(&2i16.to_be_bytes());
            b.extend_from_slice(&25u32.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
        });
        let cols = row_description(&f).unwrap();
        assert_eq!(
            cols[0],
            Column {
                name: "c".into(),
                table_oid: 16384,
                attnum: 2,
                type_oid: 25,
                format: 0
            }
        );

        let f = encode::frame(b'D', |b| {
            b.extend_from_slice(&2i16.to_be_bytes());
            b.extend_from_slice(&3i32.to_be_bytes());
            b.extend_from_slice(b"abc");
            b.extend_from_slice(&(-1i32).to_be_bytes());
        });
        let ranges = data_row(&f).unwrap();
        assert_eq!(&f.body()[ranges[0].clone().unwrap()], b"abc");
        assert_eq!(ranges[1], None);
        let values: Vec<Option<&[u8]>> = data_row_values(f.body()).collect();
        assert_eq!(values, [Some(&b"abc"[..]), None]);
        let f = encode::frame(b'D', |b| {
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&30i32.to_be_bytes());
        });
        assert!(data_row(&f).is_err());
        assert_eq!(
            data_row_values(f.body()).count(),
            0,
            "stops where it cannot read"
        );
    }

    #[test]
    fn decodes_errors_and_sasl() {
        let f = encode::error_response(&encode::ErrorFields {
            severity: "ERROR",
            code: "42501",
            message: "no",
            detail: Some("d"),
            hint: None,
        });
        let frame = Frame {
            tag: b'E',
            bytes: f,
        };
        let fields = error_fields(&frame).unwrap();
        assert!(fields.contains(&(b'C', "42501")));
        assert!(fields.contains(&(b'D', "d")));
        assert_eq!(
            sasl_mechanisms(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap(),
            ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
    }
}
