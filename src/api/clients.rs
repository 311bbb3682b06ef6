//! Who is calling: the bearer token checked against the configured SHA-256 hashes (in constant
//! time, so the time taken says nothing about how close a guess was), and each client's rate.

use super::problem::Problem;
use crate::config::{ApiSettings, ApiToken};
use axum::http::{HeaderMap, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::Digest;
use std::num::NonZeroU32;
use subtle::ConstantTimeEq;

/// The configured clients and the calls each has left.
pub struct Clients {
    tokens: Vec<ApiToken>,
    /// By client name: one bucket per token, refilled at the configured rate.
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Clients {
    pub fn new(settings: &ApiSettings) -> Clients {
        let per_minute = NonZeroU32::new(settings.per_minute).unwrap_or(NonZeroU32::MIN);
        Clients { tokens: settings.tokens.clone(), limiter: RateLimiter::keyed(Quota::per_minute(per_minute)) }
    }

    /// The client the `Authorization: Bearer` header names, or the 401 to answer. The token is
    /// never logged: only why it was refused.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&ApiToken, Box<Problem>> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(presented) = presented else {
            tracing::warn!(why = "no bearer token", "an API call was refused");
            return Err(Box::new(Problem::unauthorized("Send the token as `Authorization: Bearer <token>`.")));
        };
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        // Every configured hash is compared, whichever matches.
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.sha256.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found.ok_or_else(|| {
            tracing::warn!(why = "unknown token", "an API call was refused");
            Box::new(Problem::unauthorized("The token is not one this desk knows."))
        })
    }

    /// Counts a call of `client` against its rate; the 429 to answer when it has none left.
    pub fn admit(&self, client: &ApiToken) -> Result<(), Box<Problem>> {
        self.limiter.check_key(&client.name).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::info!(client = %client.name, retry_after_secs = secs, "an API client was rate limited");
            Box::new(Problem::rate_limited(secs.max(1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(per_minute: u32) -> Clients {
        let token = |name: &str, secret: &str, read: bool| ApiToken {
            name: name.into(),
            create: true,
            read,
            sha256: sha2::Sha256::digest(secret.as_bytes()).into(),
        };
        Clients::new(&ApiSettings {
            tokens: vec![token("helpdesk", "s3cret-one", false), token("forms", "s3cret-two", true)],
            per_minute,
            callback: None,
        })
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn a_token_is_known_by_its_hash_and_names_its_client() {
        let c = clients(60);
        assert_eq!(c.authenticate(&bearer("Bearer s3cret-two")).unwrap().name, "forms");
        assert_eq!(c.authenticate(&bearer("Bearer s3cret-one")).unwrap().name, "helpdesk");
        for wrong in ["Bearer s3cret-on", "Bearer ", "Basic s3cret-one", "s3cret-one"] {
            assert_eq!(c.authenticate(&bearer(wrong)).unwrap_err().status, 401, "{wrong}");
        }
        assert_eq!(c.authenticate(&HeaderMap::new()).unwrap_err().status, 401);
    }

    #[test]
    fn each_client_has_its_own_rate() {
        let c = clients(2);
        let (one, two) = (&c.tokens[0].clone(), &c.tokens[1].clone());
        assert!(c.admit(one).is_ok() && c.admit(one).is_ok());
        let refused = c.admit(one).unwrap_err();
        assert_eq!(refused.status, 429);
        assert!((1..=30).contains(&refused.retry_after_secs().unwrap()), "{refused:?}");
        assert!(c.admit(two).is_ok(), "another client's calls are not counted against it");
    }
}
