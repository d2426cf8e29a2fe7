//! OIDC ID tokens as approver credentials (`approvals.http.oidc`): a token the identity
//! provider signed is verified against the provider's keys in a JWKS file the operator keeps
//! (no network call on the approval path; refresh the file from the provider's `jwks_uri` as
//! it rotates keys), with its issuer, audience and expiry checked by `jsonwebtoken`. Only
//! asymmetric algorithms are accepted: a shared-secret (`HS*`) token, or a JWKS `oct` key,
//! would let anyone holding the secret mint approvers.
use std::path::PathBuf;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// `approvals.http.oidc`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` the tokens must carry, e.g. `https://login.example.com/realms/ops`.
    pub issuer: String,
    /// The `aud` they must be for (the client id registered for pgwarden).
    pub audience: String,
    /// The provider's public keys (a JWKS document), read again when it changes.
    pub jwks_file: PathBuf,
    /// The claim naming the approver (matched by `user:NAME`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim listing their groups (matched by `group:G`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_user_claim() -> String {
    "preferred_username".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Whether `token` has the shape of a JWT (three base64url parts): only those are tried as
/// ID tokens.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|p| !p.is_empty())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The approver an ID token names: `(name, groups)`, or why it is refused.
pub fn verify(cfg: &OidcConfig, token: &str) -> Result<(String, Vec<String>), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("ID token: {e}"))?;
    if !ASYMMETRIC.contains(&header.alg) {
        return Err(format!(
            "ID token signed with {:?}: only asymmetric algorithms are accepted",
            header.alg
        ));
    }
    let text = std::fs::read(&cfg.jwks_file)
        .map_err(|e| format!("reading {}: {e}", cfg.jwks_file.display()))?;
    let keys: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a JWKS document: {e}", cfg.jwks_file.display()))?;
    let jwk = match &header.kid {
        Some(kid) => keys
            .find(kid)
            .ok_or_else(|| format!("ID token key `{kid}` is not in the JWKS file"))?,
        None if keys.keys.len() == 1 => &keys.keys[0],
        None => return Err("ID token names no key (kid) and the JWKS file has several".into()),
    };
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err("the JWKS key is a shared secret (oct): refused".into());
    }
    if let Some(alg) = jwk.common.key_algorithm
        && alg.to_string() != format!("{:?}", header.alg)
    {
        return Err(format!(
            "ID token signed with {:?}, its key is for {alg}",
            header.alg
        ));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&cfg.issuer]);
    v.set_audience(&[&cfg.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map_err(|e| format!("ID token refused: {e}"))?;
    let claims = data.claims;
    let name = claims[&cfg.user_claim]
        .as_str()
        .filter(|n| super::super::approvers::valid_name(n))
        .ok_or_else(|| {
            format!(
                "ID token: claim `{}` is missing or not a valid approver name",
                cfg.user_claim
            )
        })?
        .to_owned();
    let groups = claims[&cfg.groups_claim]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str())
                .filter(|g| super::super::approvers::valid_name(g))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok((name, groups))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn rsa_key(dir: &std::path::Path, name: &str) -> EncodingKey {
        let path = dir.join(name);
        let ok = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&path)
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (Debian package openssl; `cargo xtask setup` installs it)")
            .success();
        assert!(ok);
        EncodingKey::from_rsa_pem(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn now() -> u64 {
        super::super::super::now()
    }

    #[test]
    fn id_tokens_are_checked_for_key_issuer_audience_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let key = rsa_key(dir.path(), "idp.pem");
        let other = rsa_key(dir.path(), "other.pem");
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some("k1".into());
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, serde_json::to_vec(&json!({"keys": [jwk]})).unwrap()).unwrap();
        let cfg = OidcConfig {
            issuer: "https://idp.example".into(),
            audience: "pgwarden".into(),
            jwks_file: jwks.clone(),
            user_claim: default_user_claim(),
            groups_claim: default_groups_claim(),
        };
        let claims = |iss: &str, aud: &str, exp: u64| {
            json!({"iss": iss, "aud": aud, "exp": exp, "sub": "u-1",
                   "preferred_username": "carol", "groups": ["pgwarden-approvers", "bad group"]})
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        let sign =
            |c: serde_json::Value, k: &EncodingKey| jsonwebtoken::encode(&header, &c, k).unwrap();
        let good = sign(claims("https://idp.example", "pgwarden", now() + 600), &key);
        assert!(looks_like_jwt(&good));
        assert!(!looks_like_jwt("pgw_0123"));
        assert_eq!(
            verify(&cfg, &good).unwrap(),
            ("carol".to_owned(), vec!["pgwarden-approvers".to_owned()])
        );
        for (bad, why) in [
            (
                sign(
                    claims("https://evil.example", "pgwarden", now() + 600),
                    &key,
                ),
                "iss",
            ),
            (
                sign(
                    claims("https://idp.example", "other-app", now() + 600),
                    &key,
                ),
                "aud",
            ),
            (
                sign(
                    claims("https://idp.example", "pgwarden", now() - 3600),
                    &key,
                ),
                "exp",
            ),
            (
                sign(
                    claims("https://idp.example", "pgwarden", now() + 600),
                    &other,
                ),
                "key",
            ),
        ] {
            assert!(verify(&cfg, &bad).is_err(), "{why} accepted");
        }
        // A shared-secret token is refused whatever it says.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("https://idp.example", "pgwarden", now() + 600),
            &EncodingKey::from_secret(b"anything").unwrap(),
        )
        .unwrap();
        assert!(verify(&cfg, &hs).unwrap_err().contains("asymmetric"));
        // An unknown key id.
        let mut h2 = Header::new(Algorithm::RS256);
        h2.kid = Some("k2".into());
        let t = jsonwebtoken::encode(
            &h2,
            &claims("https://idp.example", "pgwarden", now() + 600),
            &key,
        )
        .unwrap();
        assert!(verify(&cfg, &t).unwrap_err().contains("k2"));
    }
}
