//! Local stand-ins for Slack's Web API, Stripe's API and an SMTP server, on loopback, and a
//! schema of its own in a test database for each test that wants PostgreSQL. The demo
//! runs against them and so do the integration tests. They behave like the real services where
//! refund-desk can tell: Stripe's published object shapes and error bodies, idempotency replays
//! and conflicts, over-refund refusals; Slack's `ok: false` errors and message timestamps; a
//! real SMTP dialogue.

pub mod driver;
pub mod load;
pub mod postgres;
pub mod receiver;
pub mod render;
pub mod slack;
pub mod smtp;
pub mod socket;
pub mod stripe;

pub use receiver::CallbackReceiver;
pub use slack::FakeSlack;
pub use smtp::SmtpSink;
pub use stripe::{ChargeSpec, FakeStripe};

use std::time::{Duration, Instant};

/// Installs the TLS provider the stand-ins' HTTP clients use (ring, as the desk does); a
/// provider already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Polls the async `check` every 20 ms until it returns `Some`, or `deadline` passes.
pub async fn wait_for_async<T, F: Future<Output = Option<T>>>(
    deadline: Duration,
    mut check: impl FnMut() -> F,
) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or `deadline` passes.
pub async fn wait_for<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
