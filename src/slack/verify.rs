//! Slack request signatures: `v0=` hex HMAC-SHA256 of `v0:{timestamp}:{raw body}` keyed with the
//! signing secret, refused when the timestamp is more than five minutes from now either way.
//! The clock is a parameter so tests can fix "now".

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Slack's window, in seconds, both directions.
pub const MAX_AGE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request is not signed")]
    Missing,
    #[error("the request timestamp is malformed")]
    BadTimestamp,
    #[error("the request is older than five minutes (or from the future)")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Checks one request's signature as of `now` (unix seconds).
pub fn verify_signature(
    secret: &SecretString,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    if secret.expose_secret().is_empty() {
        return Err(SignatureError::Mismatch);
    }
    let ts: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
    let expected = signature.strip_prefix("v0=").and_then(|h| hex::decode(h).ok()).ok_or(SignatureError::Mismatch)?;
    // verify_slice compares in constant time.
    mac(secret.expose_secret(), timestamp.trim(), body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)?;
    if (now - ts).abs() > MAX_AGE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The `X-Slack-Signature` value for `body` at `timestamp` (for stand-ins and tests).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v0={}", hex::encode(mac(secret, &timestamp.to_string(), body).finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_official_slack_vector_gives_the_official_answer() {
        let vectors: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/signatures/slack_sig_vectors.json")).unwrap();
        let vectors = vectors["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 7);
        for v in vectors {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            let secret = SecretString::from(s("signing_secret"));
            let result = verify_signature(
                &secret,
                Some(&s("timestamp")),
                Some(&s("x_slack_signature")),
                s("body").as_bytes(),
                v["now"].as_i64().unwrap(),
            );
            assert_eq!(result.is_ok(), v["expect_valid"].as_bool().unwrap(), "{}: {result:?}", s("name"));
        }
    }

    #[test]
    fn signing_then_verifying_agrees_and_missing_parts_are_refused() {
        let secret = SecretString::from("s3cret".to_string());
        let sig = sign("s3cret", 1_700_000_000, b"text=hi");
        assert_eq!(verify_signature(&secret, Some("1700000000"), Some(&sig), b"text=hi", 1_700_000_100), Ok(()));
        assert_eq!(
            verify_signature(&secret, None, Some(&sig), b"text=hi", 1_700_000_100),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(&secret, Some("1700000000"), None, b"text=hi", 1_700_000_100),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(&secret, Some("soon"), Some(&sig), b"text=hi", 1_700_000_100),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify_signature(&secret, Some("1700000000"), Some("v0=zz"), b"text=hi", 1_700_000_100),
            Err(SignatureError::Mismatch)
        );
        let empty = SecretString::from(String::new());
        assert_eq!(
            verify_signature(&empty, Some("1700000000"), Some(&sign("", 1_700_000_000, b"x")), b"x", 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
    }
}
