//! The real binary, killed with SIGKILL at each step of the flow and restarted on the same data
//! directory: every request still ends with exactly one refund and a finished thread.

use crate::helpers::{card_in, request_id_in};
use refund_desk::domain::RequestId;
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::stripe::Fault;
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe, SmtpSink, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REQUESTER: &str = "U0REQUEST1";
const APPROVER: &str = "U0APPROVE1";
const DEADLINE: Duration = Duration::from_secs(20);

struct World {
    slack: FakeSlack,
    stripe: FakeStripe,
    smtp: SmtpSink,
    dir: tempfile::TempDir,
    port: u16,
    desk: Option<Child>,
    driver: SlackDriver,
}

impl World {
    async fn new() -> World {
        let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
        let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
        let smtp = SmtpSink::start().await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        stripe.send_webhooks_to(&format!("http://127.0.0.1:{port}/stripe/webhook"), driver::WEBHOOK_SECRET);
        let driver = SlackDriver::new(format!("http://127.0.0.1:{port}"));
        World { slack, stripe, smtp, dir: tempfile::tempdir().unwrap(), port, desk: None, driver }
    }

    async fn start(&mut self) {
        let child = crate::helpers::desk_command(&self.slack.url, &self.stripe.url, self.dir.path())
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("STRIPE_TIMEOUT_SECS", "2")
            .env("SMTP_URL", self.smtp.url())
            .env("EMAIL_FROM", driver::EMAIL_FROM)
            .env("REFUND_DESK_JOB_FIRST_RETRY_MS", "50")
            .env("REFUND_DESK_JOB_MAX_RETRY_SECS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.desk = Some(child);
        let http = reqwest::Client::new();
        let until = Instant::now() + DEADLINE;
        loop {
            let ready = http.get(format!("http://127.0.0.1:{}/readyz", self.port)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(Instant::now() < until, "the desk never became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.desk.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then the store can be read.
    fn stop(&mut self) {
        if let Some(mut child) = self.desk.take() {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            assert_eq!(child.wait().unwrap().code(), Some(0));
        }
    }

    async fn request(&self, text: &str) -> RequestId {
        let (status, body) = self.driver.slash(REQUESTER, text).await;
        assert_eq!(status, 200);
        request_id_in(body["text"].as_str().unwrap_or_default())
    }

    async fn card_ts(&self, id: RequestId) -> String {
        card_in(&self.slack, id).await.ts
    }

    fn refunds_for(&self, id: RequestId) -> Vec<serde_json::Value> {
        self.stripe.refunds_for(&id.to_string())
    }

    /// Drives the request to its end from wherever it is, then checks the invariants.
    async fn finish_and_check(&mut self, id: RequestId) {
        let card = self.card_ts(id).await;
        // Approve if the click was lost with the crash; a repeated click changes nothing.
        assert_eq!(self.driver.click(APPROVER, "refund_approve", &id.to_string(), &card).await, 200);
        let refund = wait_for(DEADLINE, || self.refunds_for(id).pop()).await.expect("a refund");
        // The desk records the refund (retrying with the same key) before Stripe confirms.
        wait_for(DEADLINE, || {
            self.slack.thread(&card).iter().any(|m| m.text.contains("Submitted to Stripe")).then_some(())
        })
        .await
        .expect("submission recorded");
        let event =
            self.stripe.refund_event(refund["id"].as_str().unwrap(), "refund.updated", "succeeded", None).unwrap();
        assert_eq!(self.stripe.deliver(&event).await.unwrap(), 200);
        wait_for(DEADLINE, || self.slack.thread(&card).iter().any(|m| m.text.contains("emailed")).then_some(()))
            .await
            .expect("the thread finished");
        assert_eq!(self.refunds_for(id).len(), 1, "{id}: exactly one refund");
        let emails =
            self.smtp.messages().into_iter().filter(|m| m.body().contains(refund["id"].as_str().unwrap())).count();
        assert_eq!(emails, 1, "{id}: exactly one email");
    }
}

#[tokio::test]
async fn killed_at_every_step_the_desk_refunds_each_request_exactly_once() {
    let mut world = World::new().await;
    world.start().await;

    // 1. Right after the answer to /refund.
    let charge = world.stripe.add_charge(ChargeSpec::default()).0;
    let first = world.request(&format!("{charge} 10.00 duplicate")).await;
    world.kill();
    world.start().await;
    world.finish_and_check(first).await;

    // 2. Right after the approval click was answered.
    let charge = world.stripe.add_charge(ChargeSpec::default()).0;
    let second = world.request(&format!("{charge} 10.00")).await;
    let card = world.card_ts(second).await;
    world.stripe.set_refunds_down(true);
    assert_eq!(world.driver.click(APPROVER, "refund_approve", &second.to_string(), &card).await, 200);
    world.kill();
    world.stripe.set_refunds_down(false);
    world.start().await;
    world.finish_and_check(second).await;

    // 3. During the Stripe call: Stripe has not answered (or acted) yet.
    let charge = world.stripe.add_charge(ChargeSpec::default()).0;
    let third = world.request(&format!("{charge} 10.00")).await;
    let card = world.card_ts(third).await;
    let posts_before = world.stripe.refund_posts().len();
    world.stripe.fail_next_refund(Fault::Hang(Duration::from_secs(30)));
    assert_eq!(world.driver.click(APPROVER, "refund_approve", &third.to_string(), &card).await, 200);
    wait_for(DEADLINE, || (world.stripe.refund_posts().len() > posts_before).then_some(()))
        .await
        .expect("the call began");
    world.kill();
    world.start().await;
    world.finish_and_check(third).await;

    // 4. After Stripe made the refund, before the desk recorded it.
    let charge = world.stripe.add_charge(ChargeSpec::default()).0;
    let fourth = world.request(&format!("{charge} 10.00")).await;
    let card = world.card_ts(fourth).await;
    world.stripe.fail_next_refund(Fault::ApplyThenHang(Duration::from_secs(30)));
    assert_eq!(world.driver.click(APPROVER, "refund_approve", &fourth.to_string(), &card).await, 200);
    wait_for(DEADLINE, || world.refunds_for(fourth).pop()).await.expect("Stripe made it");
    world.kill();
    world.start().await;
    world.finish_and_check(fourth).await;

    // The database itself agrees.
    world.stop();
    let store = refund_desk::storage::Store::open(world.dir.path()).unwrap();
    assert_eq!(store.verify_audit().await.unwrap().problem, None, "the audit chain survived every kill");
    for id in [first, second, third, fourth] {
        let r = store.get_request(id).await.unwrap().unwrap();
        assert_eq!(r.status, refund_desk::domain::RequestStatus::Succeeded, "{id}");
    }
}
