//! A load generator for the liveness test and the `load` benchmark: concurrent clients that play
//! Slack (signed `/refund`s and Approve clicks on earlier requests) and Stripe (a refund's
//! `refund.updated` webhook, each sent twice) against a running desk, while another task asks
//! `/healthz` throughout. Bounded in time; every request goes to loopback.

use super::driver::SlackDriver;
use super::{ChargeSpec, FakeSlack, FakeStripe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the clients do.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub clients: usize,
    pub duration: Duration,
    /// Who types `/refund`.
    pub requester: String,
    /// Who clicks Approve; `None`: nobody approves and no webhooks are sent.
    pub approver: Option<String>,
    /// How long one answer may take before it counts as not answered.
    pub answer_timeout: Duration,
}

/// One `/refund` that was answered with a request id.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub answered_at: Instant,
    pub latency: Duration,
}

/// What happened.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub accepted: Vec<Accepted>,
    /// `/refund`s sent, answered or not.
    pub commands_sent: u64,
    pub clicks: u64,
    pub webhooks: u64,
    /// Anything that was not a 2xx answer in time, in words (the first few kept).
    pub failures: Vec<String>,
    pub failure_count: u64,
    pub health_checks: u64,
    pub health_failures: u64,
    pub elapsed: Duration,
}

impl LoadReport {
    fn fail(&mut self, what: String) {
        self.failure_count += 1;
        if self.failures.len() < 20 {
            self.failures.push(what);
        }
    }

    /// The answer time below which `p` (0 to 1) of the `/refund` answers came.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut all: Vec<Duration> = self.accepted.iter().map(|a| a.latency).collect();
        all.sort();
        let i = ((all.len() as f64 * p).ceil() as usize).saturating_sub(1);
        all.get(i).copied().unwrap_or_default()
    }
}

/// Runs `plan` against the desk at `desk_base` (`http://127.0.0.1:port`), whose Slack and Stripe
/// are `slack` and `stripe`; returns when the time is up and every client has stopped.
pub async fn run_load(desk_base: &str, slack: &FakeSlack, stripe: &FakeStripe, plan: &LoadPlan) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let started = Instant::now();
    let until = started + plan.duration;
    // The desk (hyper) closes a keep-alive connection idle for 30 s; a client that keeps idle
    // connections longer races that close and sees "connection closed before message
    // completed". Real clients let go sooner, and so does this one.
    let http = reqwest::Client::builder()
        .timeout(plan.answer_timeout)
        .pool_idle_timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client");
    let driver = SlackDriver::with_client(desk_base.to_string(), http.clone());

    let health = tokio::spawn({
        let (report, http, base) = (report.clone(), http.clone(), desk_base.to_string());
        async move {
            while Instant::now() < until {
                let ok = http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success());
                if let Ok(mut r) = report.lock() {
                    r.health_checks += 1;
                    if !ok {
                        r.health_failures += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..plan.clients {
        let (report, driver, slack, stripe, plan) =
            (report.clone(), driver.clone(), slack.clone(), stripe.clone(), plan.clone());
        clients.spawn(async move { run_client(client, until, &report, &driver, &slack, &stripe, &plan).await });
    }
    while clients.join_next().await.is_some() {}
    let _ = health.await;
    let mut report = std::mem::take(&mut *report.lock().unwrap_or_else(|p| p.into_inner()));
    report.elapsed = started.elapsed();
    report
}

fn request_id_in(text: &str) -> Option<String> {
    let start = text.find("R-")?;
    let digits: String = text[start + 2..].chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("R-{digits}"))
}

async fn run_client(
    client: usize,
    until: Instant,
    report: &Mutex<LoadReport>,
    driver: &SlackDriver,
    slack: &FakeSlack,
    stripe: &FakeStripe,
    plan: &LoadPlan,
) {
    let record = |f: &mut dyn FnMut(&mut LoadReport)| {
        if let Ok(mut r) = report.lock() {
            f(&mut r)
        }
    };
    // This client's requests waiting for a card to approve, and those approved.
    let mut to_approve: std::collections::VecDeque<String> = Default::default();
    let mut approved: std::collections::VecDeque<String> = Default::default();
    let mut step = client;
    while Instant::now() < until {
        step += 1;
        if let Some(approver) = &plan.approver {
            // Every fourth step clicks Approve on an earlier request whose card is up.
            if step % 4 == 1
                && let Some(id) = to_approve.front().cloned()
                && let Some(card) = slack.messages_with_button(&id).first()
            {
                to_approve.pop_front();
                match driver.try_click(approver, crate::driver::APPROVE_ACTION, &id, &card.ts).await {
                    Ok(200) => {
                        approved.push_back(id);
                        record(&mut |r| r.clicks += 1);
                    }
                    other => record(&mut |r| r.fail(format!("Approve on {id}: {other:?}"))),
                }
                continue;
            }
            // Every fourth step has Stripe confirm an approved request's refund, twice.
            if step % 4 == 3
                && let Some(id) = approved.front().cloned()
                && let Some(refund) = stripe.refund_for_request(&id)
            {
                approved.pop_front();
                if let Some(event) = stripe.refund_event(&refund, "refund.updated", "succeeded", None) {
                    for _ in 0..2 {
                        match stripe.deliver(&event).await {
                            Ok(status) if (200..300).contains(&status) => record(&mut |r| r.webhooks += 1),
                            other => record(&mut |r| r.fail(format!("webhook for {id}: {other:?}"))),
                        }
                    }
                }
                continue;
            }
        }
        let (charge, _) = stripe.add_charge(ChargeSpec::default());
        let text = format!("{charge} 10.00 duplicate charged twice");
        let sent = Instant::now();
        record(&mut |r| r.commands_sent += 1);
        match driver.try_slash(&plan.requester, &text).await {
            Ok((200, answer)) => {
                let latency = sent.elapsed();
                let said = answer["text"].as_str().unwrap_or_default();
                match request_id_in(said) {
                    Some(id) => {
                        to_approve.push_back(id.clone());
                        record(&mut |r| {
                            r.accepted.push(Accepted { id: id.clone(), answered_at: Instant::now(), latency })
                        });
                    }
                    None => record(&mut |r| r.fail(format!("/refund answered without a request id: {said}"))),
                }
            }
            other => record(&mut |r| r.fail(format!("/refund: {other:?}"))),
        }
    }
}
