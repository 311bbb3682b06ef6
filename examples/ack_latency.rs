//! How fast refund-desk answers Slack: signed `/refund` commands against the real service, each
//! one stored and flushed to disk before its answer; the Stripe checks run afterwards as jobs.
//!
//! `cargo run --release --example ack_latency -- [requests] [concurrency]`

use refund_desk::app::Application;
use refund_desk::config::JobSettings;
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (requests, concurrency) = (args.first().copied().unwrap_or(2000), args.get(1).copied().unwrap_or(8));
    let slack = FakeSlack::start(driver::BOT_TOKEN).await?;
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await?;
    let dir = tempfile::tempdir()?;
    let settings = refund_desk::demo::desk_settings(
        &slack.url,
        &stripe.url,
        None,
        dir.path(),
        "U0APPROVE1",
        JobSettings::default(),
    );
    let app = Application::build(settings).await?;
    let desk = SlackDriver::new(format!("http://{}", app.local_addr()));
    let (charge, _) = stripe.add_charge(ChargeSpec { amount: 99_999_999, ..ChargeSpec::default() });

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (desk, charge) = (desk.clone(), charge.clone());
        workers.spawn(async move {
            let mut times = vec![];
            for _ in (w..requests).step_by(concurrency as usize) {
                let t = Instant::now();
                let (status, _) = desk.slash("U0REQUEST1", &format!("{charge} 1.00 duplicate")).await;
                assert_eq!(status, 200);
                times.push(t.elapsed());
            }
            times
        });
    }
    let mut times: Vec<Duration> = vec![];
    while let Some(t) = workers.join_next().await {
        times.extend(t?);
    }
    let wall = started.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p) as usize];
    println!(
        "{} signed /refund commands, {} at a time: p50 {:?}, p99 {:?}, max {:?}; {:.0} answers/s (each one stored and fsynced before the answer)",
        times.len(),
        concurrency,
        pct(0.5),
        pct(0.99),
        times.last().copied().unwrap_or_default(),
        times.len() as f64 / wall.as_secs_f64()
    );
    app.stop().await?;
    Ok(())
}
