//! Two real `refund-desk serve` processes on one PostgreSQL database behave as one desk: clicks
//! split between them refund once, a replica killed mid-refund leaves the refund to the other
//! after its lease, one Stripe event delivered to both is applied once, and a reminder fires
//! once. These need a database: without `REFUND_DESK_TEST_DATABASE_URL` they say they were
//! skipped (and fail under `REFUND_DESK_REQUIRE_POSTGRES`, as in `.ci/run`).

use crate::helpers::{KillOnDrop, card_in, desk_command, free_port, request_id_in, wait_until_ready};
use refund_desk::domain::{RequestId, RequestStatus};
use refund_desk::storage::Store;
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::stripe::Fault;
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe, SmtpSink, wait_for, wait_for_async};
use secrecy::{ExposeSecret, SecretString};
use std::process::Stdio;
use std::time::Duration;

const REQUESTER: &str = "U0REQUEST1";
const APPROVER: &str = "U0APPROVE1";
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a replica holds a job; short, so a dead one's work is taken over within the test.
const LEASE_SECS: &str = "3";

struct Replica {
    port: u16,
    driver: SlackDriver,
    process: Option<KillOnDrop>,
    _dir: Option<tempfile::TempDir>,
}

struct Desk {
    slack: FakeSlack,
    stripe: FakeStripe,
    smtp: SmtpSink,
    database: SecretString,
    /// The database as the tests read it, opened on first use (opening it makes the
    /// installation's id, so a migration test opens it only after copying into it).
    store: tokio::sync::OnceCell<Store>,
    replicas: Vec<Replica>,
    config: tempfile::NamedTempFile,
}

impl Desk {
    /// The stand-ins and a fresh database; `None` when there is no test database.
    async fn new(policy: &str) -> Option<Desk> {
        let database = refund_desk_standins::postgres::fresh_database_url().await?;
        let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
        let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
        let smtp = SmtpSink::start().await.unwrap();
        let store = tokio::sync::OnceCell::new();
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), policy).unwrap();
        Some(Desk { slack, stripe, smtp, database, store, replicas: vec![], config })
    }

    async fn store(&self) -> &Store {
        self.store
            .get_or_init(|| async {
                let url = self.database.expose_secret();
                let store = refund_desk::storage::postgres::PgStore::connect(url, Duration::from_secs(3));
                Store::Postgres(store.await.expect("the test database opens"))
            })
            .await
    }

    /// Starts one more replica on the same database; returns its index.
    async fn start_replica(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let mut command = desk_command(&self.slack.url, &self.stripe.url, dir.path());
        command.env("DATABASE_URL", self.database.expose_secret());
        self.start(command, Some(dir)).await
    }

    /// Starts a desk on the embedded store in `dir` instead, as before a migration.
    async fn start_on_sled(&mut self, dir: &std::path::Path) -> usize {
        let command = desk_command(&self.slack.url, &self.stripe.url, dir);
        self.start(command, None).await
    }

    async fn start(&mut self, mut command: std::process::Command, dir: Option<tempfile::TempDir>) -> usize {
        let port = free_port();
        let child = command
            .env("REFUND_DESK_JOB_LEASE_SECS", LEASE_SECS)
            .env("REFUND_DESK_CONFIG", self.config.path())
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
            .env("SMTP_URL", self.smtp.url())
            .env("EMAIL_FROM", driver::EMAIL_FROM)
            .env("STRIPE_TIMEOUT_SECS", "60")
            .env("REFUND_DESK_JOB_FIRST_RETRY_MS", "50")
            .env("REFUND_DESK_JOB_MAX_RETRY_SECS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = Some(KillOnDrop(child));
        wait_until_ready(port, DEADLINE).await;
        let driver = SlackDriver::new(format!("http://127.0.0.1:{port}"));
        self.replicas.push(Replica { port, driver, process, _dir: dir });
        self.replicas.len() - 1
    }

    /// SIGKILL: no shutdown, nothing handed back.
    fn kill(&mut self, replica: usize) {
        if let Some(mut process) = self.replicas[replica].process.take() {
            process.0.kill().unwrap();
            process.0.wait().unwrap();
        }
    }

    async fn request(&self, replica: usize, text: &str) -> RequestId {
        let (status, body) = self.replicas[replica].driver.slash(REQUESTER, text).await;
        assert_eq!(status, 200, "{body}");
        request_id_in(body["text"].as_str().unwrap_or_default())
    }

    async fn card_ts(&self, id: RequestId) -> String {
        card_in(&self.slack, id).await.ts
    }

    async fn wait_for_status(&self, id: RequestId, status: RequestStatus) {
        let reached = wait_for_async(DEADLINE, || async {
            self.store().await.get_request(id).await.unwrap().filter(|r| r.status == status)
        })
        .await;
        assert!(reached.is_some(), "{id} never reached {status:?}");
    }

    /// Waits until no job is left that is due within a minute: whatever was going to happen
    /// has happened, on whichever replica.
    async fn wait_until_idle(&self) {
        let later = || chrono::Utc::now() + chrono::Duration::seconds(60);
        let idle = wait_for_async(DEADLINE, || async {
            self.store()
                .await
                .all_jobs()
                .await
                .unwrap()
                .iter()
                .all(|j| j.parked || j.not_before > later())
                .then_some(())
        })
        .await;
        assert!(idle.is_some(), "jobs still queued: {:?}", self.store().await.all_jobs().await.unwrap());
    }

    fn refunds_for(&self, id: RequestId) -> Vec<serde_json::Value> {
        self.stripe.refunds_for(&id.to_string())
    }
}

#[tokio::test]
async fn twenty_approve_clicks_split_between_two_replicas_make_exactly_one_refund() {
    let Some(mut desk) = Desk::new("").await else { return };
    let (a, b) = (desk.start_replica().await, desk.start_replica().await);
    let charge = desk.stripe.add_charge(ChargeSpec::default()).0;
    let id = desk.request(a, &format!("{charge} 25.00 duplicate")).await;
    let card = desk.card_ts(id).await;
    let clicks: Vec<_> = (0..20)
        .map(|n| {
            let driver = desk.replicas[if n % 2 == 0 { a } else { b }].driver.clone();
            let card = card.clone();
            tokio::spawn(async move { driver.click(APPROVER, "refund_approve", &id.to_string(), &card).await })
        })
        .collect();
    for click in clicks {
        assert_eq!(click.await.unwrap(), 200, "every click is answered");
    }
    desk.wait_for_status(id, RequestStatus::Submitted).await;
    desk.wait_until_idle().await;
    assert_eq!(desk.refunds_for(id).len(), 1, "exactly one refund");
    assert_eq!(desk.stripe.refund_posts().len(), 1, "asked of Stripe once");
    let approvals =
        desk.store().await.audit_of(id).await.unwrap().into_iter().filter(|e| e.to == RequestStatus::Approved);
    assert_eq!(approvals.count(), 1);
    assert_eq!(desk.store().await.verify_audit().await.unwrap().problem, None);
}

#[tokio::test]
async fn a_replica_killed_mid_refund_leaves_the_refund_to_the_other_once_after_its_lease() {
    let Some(mut desk) = Desk::new("").await else { return };
    let a = desk.start_replica().await;
    let charge = desk.stripe.add_charge(ChargeSpec::default()).0;
    let id = desk.request(a, &format!("{charge} 25.00 duplicate")).await;
    let card = desk.card_ts(id).await;
    // Stripe makes the refund, then keeps A waiting for its answer.
    desk.stripe.fail_next_refund(Fault::ApplyThenHang(Duration::from_secs(120)));
    assert_eq!(desk.replicas[a].driver.click(APPROVER, "refund_approve", &id.to_string(), &card).await, 200);
    wait_for(DEADLINE, || desk.stripe.refund_posts().first().cloned()).await.expect("A asked Stripe");
    let b = desk.start_replica().await;
    desk.kill(a);
    let killed = std::time::Instant::now();
    // B takes the job over once A's lease is over, and finds the refund A made: not a second.
    desk.wait_for_status(id, RequestStatus::Submitted).await;
    // A renewed its claim every third of a lease while alive, so it held the job for at least
    // two thirds of a lease after it died: B cannot have had it sooner.
    let lease = Duration::from_secs(LEASE_SECS.parse().unwrap());
    assert!(killed.elapsed() >= lease * 2 / 3, "B took the job {:?} after A died", killed.elapsed());
    desk.wait_until_idle().await;
    assert_eq!(desk.refunds_for(id).len(), 1, "exactly one refund");
    let keys: std::collections::HashSet<_> =
        desk.stripe.refund_posts().into_iter().map(|p| p.idempotency_key).collect();
    assert_eq!(keys.len(), 1, "B asked with A's idempotency key, if it asked at all: {keys:?}");
    assert!(desk.slack.thread(&card).iter().any(|m| m.text.contains("Submitted to Stripe")));
    let _ = b;
}

#[tokio::test]
async fn a_refund_slower_than_the_lease_on_a_live_replica_is_not_taken_over_by_the_other() {
    let Some(mut desk) = Desk::new("").await else { return };
    let (a, _b) = (desk.start_replica().await, desk.start_replica().await);
    let charge = desk.stripe.add_charge(ChargeSpec::default()).0;
    let id = desk.request(a, &format!("{charge} 25.00 duplicate")).await;
    let card = desk.card_ts(id).await;
    // Stripe answers after more than two leases; A is alive and waiting for it the whole time.
    desk.stripe.fail_next_refund(Fault::ApplyThenHang(Duration::from_secs(8)));
    let driver = &desk.replicas[a].driver;
    assert_eq!(driver.click(APPROVER, "refund_approve", &id.to_string(), &card).await, 200);
    desk.wait_for_status(id, RequestStatus::Submitted).await;
    desk.wait_until_idle().await;
    assert_eq!(desk.stripe.refund_posts().len(), 1, "B never ran the refund A was still running");
    assert_eq!(desk.refunds_for(id).len(), 1);
}

#[tokio::test]
async fn one_stripe_event_delivered_to_both_replicas_at_once_is_applied_once() {
    let Some(mut desk) = Desk::new("").await else { return };
    let (a, b) = (desk.start_replica().await, desk.start_replica().await);
    let charge = desk.stripe.add_charge(ChargeSpec::default()).0;
    let id = desk.request(a, &format!("{charge} 25.00 duplicate")).await;
    let card = desk.card_ts(id).await;
    assert_eq!(desk.replicas[b].driver.click(APPROVER, "refund_approve", &id.to_string(), &card).await, 200);
    desk.wait_for_status(id, RequestStatus::Submitted).await;
    let refund = desk.refunds_for(id).pop().expect("a refund");
    let event = desk.stripe.refund_event(refund["id"].as_str().unwrap(), "refund.updated", "succeeded", None).unwrap();
    let body = serde_json::to_vec(&event).unwrap();
    let http = reqwest::Client::new();
    let deliver = |port: u16| {
        let (http, body) = (http.clone(), body.clone());
        async move {
            let signature = refund_desk_standins::stripe::sign_webhook(
                &body,
                driver::WEBHOOK_SECRET,
                chrono::Utc::now().timestamp(),
            );
            http.post(format!("http://127.0.0.1:{port}/stripe/webhook"))
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (to_a, to_b) = tokio::join!(deliver(desk.replicas[a].port), deliver(desk.replicas[b].port));
    assert_eq!((to_a, to_b), (200, 200), "both acknowledge");
    desk.wait_for_status(id, RequestStatus::Succeeded).await;
    desk.wait_until_idle().await;
    let succeeded =
        desk.store().await.audit_of(id).await.unwrap().into_iter().filter(|e| e.to == RequestStatus::Succeeded);
    assert_eq!(succeeded.count(), 1, "applied once");
    let emails = desk.smtp.messages().into_iter().filter(|m| m.body().contains(refund["id"].as_str().unwrap()));
    assert_eq!(emails.count(), 1, "the customer is emailed once");
}

#[tokio::test]
async fn a_reminder_fires_once_with_two_replicas_up() {
    let Some(mut desk) = Desk::new("[policy]\nremind_after = \"2s\"\n").await else { return };
    let (a, _b) = (desk.start_replica().await, desk.start_replica().await);
    let charge = desk.stripe.add_charge(ChargeSpec::default()).0;
    let id = desk.request(a, &format!("{charge} 25.00 duplicate")).await;
    let card = desk.card_ts(id).await;
    let reminders =
        || desk.slack.thread(&card).into_iter().filter(|m| m.text.contains("has been waiting for approval")).count();
    wait_for(DEADLINE, || (reminders() > 0).then_some(())).await.expect("a reminder");
    desk.wait_until_idle().await;
    assert_eq!(reminders(), 1, "{:?}", desk.slack.thread(&card));
    let reminded = desk.store().await.get_request(id).await.unwrap().unwrap().reminded_at;
    assert!(reminded.is_some());
}

/// `refund-desk` itself, run as an operator would.
fn operator(args: &[&str], database: &SecretString) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_refund-desk"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database.expose_secret())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_sled_store_migrated_to_postgres_carries_on_there_and_its_refund_in_flight_is_made_once() {
    let Some(mut desk) = Desk::new("").await else { return };
    let data = tempfile::tempdir().unwrap();
    let old = desk.start_on_sled(data.path()).await;
    let (first, second) =
        (desk.stripe.add_charge(ChargeSpec::default()).0, desk.stripe.add_charge(ChargeSpec::default()).0);
    let waiting = desk.request(old, &format!("{first} 10.00 duplicate")).await;
    let waiting_card = desk.card_ts(waiting).await;
    // The second is approved; Stripe makes its refund, and the desk dies before hearing back.
    let in_flight = desk.request(old, &format!("{second} 25.00 duplicate")).await;
    let card = desk.card_ts(in_flight).await;
    desk.stripe.fail_next_refund(Fault::ApplyThenHang(Duration::from_secs(120)));
    assert_eq!(desk.replicas[old].driver.click(APPROVER, "refund_approve", &in_flight.to_string(), &card).await, 200);
    wait_for(DEADLINE, || desk.stripe.refund_posts().first().cloned()).await.expect("the desk asked Stripe");
    desk.kill(old);

    let url = desk.database.expose_secret().to_string();
    let from = data.path().to_str().unwrap();
    let copied = operator(&["migrate", "--from-data-dir", from, "--to", &url], &desk.database);
    let said = String::from_utf8_lossy(&copied.stdout);
    assert!(copied.status.success(), "{said}{}", String::from_utf8_lossy(&copied.stderr));
    assert!(said.contains("Copied 2 requests") && said.contains("audit trail verifies"), "{said}");
    assert!(!said.contains(&url) && !String::from_utf8_lossy(&copied.stderr).contains("refund_desk:"), "no password");
    let again = operator(&["migrate", "--from-data-dir", from, "--to", &url], &desk.database);
    assert!(!again.status.success(), "a second copy into a database that holds one is refused");
    let refused = String::from_utf8_lossy(&again.stderr);
    assert!(refused.contains("nothing was copied"), "{refused}");
    // The old store is an archive now: a desk no longer starts on it.
    let mut restarted = KillOnDrop(
        desk_command(&desk.slack.url, &desk.stripe.url, data.path())
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let ended = wait_for(DEADLINE, || restarted.0.try_wait().unwrap()).await;
    assert!(ended.is_some_and(|status| !status.success()), "a desk started on the migrated store");
    let mut why = String::new();
    std::io::Read::read_to_string(&mut restarted.0.stderr.take().unwrap(), &mut why).unwrap();
    assert!(why.contains("copied to PostgreSQL") && why.contains("DATABASE_URL"), "{why}");

    // A desk on PostgreSQL takes over: the refund in flight is asked again under the same key
    // (the installation id came along), so Stripe makes it once.
    let new = desk.start_replica().await;
    desk.wait_for_status(in_flight, RequestStatus::Submitted).await;
    assert_eq!(desk.refunds_for(in_flight).len(), 1, "exactly one refund");
    let keys: std::collections::HashSet<_> =
        desk.stripe.refund_posts().into_iter().map(|p| p.idempotency_key).collect();
    assert_eq!(keys.len(), 1, "asked under the key the old desk used: {keys:?}");
    // What waited can be decided there, and numbering goes on.
    let driver = &desk.replicas[new].driver;
    assert_eq!(driver.click(APPROVER, "refund_approve", &waiting.to_string(), &waiting_card).await, 200);
    desk.wait_for_status(waiting, RequestStatus::Submitted).await;
    let third = desk.request(new, &format!("{first} 5.00 duplicate")).await;
    assert_eq!(third.number(), in_flight.number() + 1);
    desk.wait_until_idle().await;

    // The operator commands work while the desk runs on PostgreSQL.
    let verify = operator(&["audit", "verify"], &desk.database);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact"));
    let jobs = operator(&["jobs", "list", "--all"], &desk.database);
    assert!(jobs.status.success(), "{}", String::from_utf8_lossy(&jobs.stderr));
    let trail = desk.store().await.audit_of(in_flight).await.unwrap();
    let states: Vec<_> = trail.iter().map(|e| e.to).collect();
    assert_eq!(states.iter().filter(|s| **s == RequestStatus::Approved).count(), 1, "{states:?}");
    assert_eq!(states.last(), Some(&RequestStatus::Submitted), "{states:?}");
}
