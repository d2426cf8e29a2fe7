//! SCRAM channel binding (`tls-server-end-point`, RFC 5929 §4): the hash of the server's TLS
//! certificate, which pgwarden puts into SCRAM-SHA-256-PLUS so that the server's proof covers
//! the TLS connection pgwarden actually has. A man in the middle who terminates that TLS (with
//! `sslmode: require`, nothing checks the certificate) presents its own certificate, the hash
//! differs from the one the real server computes over its own, and the login fails instead of
//! being relayed.
//!
//! The hash function is the one of the certificate's signature algorithm, SHA-256 for MD5 and
//! SHA-1 (as PostgreSQL computes it, `be_tls_get_certificate_hash`); an algorithm without a
//! single hash (Ed25519, RSASSA-PSS) gets none, and PostgreSQL cannot bind those either.
//!
//! Reading the algorithm needs one OID out of the certificate's DER: a walk of three
//! tag-length-value headers here, rather than an X.509 parser in the dependency tree (none is
//! in it, and nothing else of the certificate is read).
use sha2::Digest as _;

/// `tls-server-end-point` data of the certificate `der`, or `None` when its signature
/// algorithm has no single hash pgwarden knows.
pub fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm(der)?;
    Some(match hash_of(oid)? {
        Hash::Sha224 => sha2::Sha224::digest(der).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(der).to_vec(),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a signature algorithm, by its OID's DER content.
fn hash_of(oid: &[u8]) -> Option<Hash> {
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    if let Some(rest) = oid.strip_prefix(RSA) {
        return match rest {
            // md5, sha1, sha256 WithRSAEncryption.
            [0x04 | 0x05 | 0x0B] => Some(Hash::Sha256),
            [0x0C] => Some(Hash::Sha384),
            [0x0D] => Some(Hash::Sha512),
            [0x0E] => Some(Hash::Sha224),
            // RSASSA-PSS (its hash is in the parameters) and the rest.
            _ => None,
        };
    }
    match oid.strip_prefix(ECDSA_SHA2)? {
        [0x01] => Some(Hash::Sha224),
        [0x02] => Some(Hash::Sha256),
        [0x03] => Some(Hash::Sha384),
        [0x04] => Some(Hash::Sha512),
        _ => None,
    }
}

/// The OID content of `Certificate.signatureAlgorithm.algorithm`:
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, ... }, BIT STRING }`.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = tlv(cert)? else {
        return None;
    };
    let (0x30, algorithm, _) = tlv(rest)? else {
        return None;
    };
    match tlv(algorithm)? {
        (0x06, oid, _) => Some(oid),
        _ => None,
    }
}

/// One DER tag-length-value: (tag, value, what follows). Definite lengths only, as DER has.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER certificate skeleton with this signature algorithm OID (content bytes) and a
    /// long-form length on the outer SEQUENCE.
    fn cert(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut alg = vec![0x30, u8::try_from(oid.len() + 4).unwrap(), 0x06];
        alg.push(u8::try_from(oid.len()).unwrap());
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let sig = [0x03, 0x02, 0x00, 0xFF];
        let body: Vec<u8> = [&tbs[..], &alg, &sig].concat();
        let mut out = vec![0x30, 0x81, u8::try_from(body.len()).unwrap()];
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let rsa = |last: u8| [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, last];
        let ecdsa = |last: u8| [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, last];
        for (oid, len) in [
            (rsa(0x0B).to_vec(), Some(32)),
            (rsa(0x05).to_vec(), Some(32)),
            (rsa(0x04).to_vec(), Some(32)),
            (rsa(0x0C).to_vec(), Some(48)),
            (rsa(0x0D).to_vec(), Some(64)),
            (rsa(0x0E).to_vec(), Some(28)),
            (rsa(0x0A).to_vec(), None),
            (ecdsa(0x02).to_vec(), Some(32)),
            (ecdsa(0x03).to_vec(), Some(48)),
            (ecdsa(0x04).to_vec(), Some(64)),
            (vec![0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01], Some(32)),
            // Ed25519.
            (vec![0x2B, 0x65, 0x70], None),
        ] {
            let der = cert(&oid);
            let got = server_end_point(&der);
            assert_eq!(got.as_ref().map(Vec::len), len, "{oid:02x?}");
            if len == Some(32) {
                assert_eq!(got.unwrap(), sha2::Sha256::digest(&der).to_vec());
            }
        }
    }

    #[test]
    fn truncated_or_odd_der_gives_none() {
        let der = cert(&[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02]);
        for cut in 0..der.len() - 4 {
            assert_eq!(server_end_point(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(server_end_point(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(server_end_point(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(server_end_point(b""), None);
    }
}
