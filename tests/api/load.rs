//! Under load the real binary keeps answering: no deadlock, every request answered after a real
//! sync, every accepted request carded exactly once, and a clean stop in the middle of it all.

use crate::helpers::{APPROVER, HEAVY, KillOnDrop, REQUESTER, desk_command, free_port, terminate, wait_until_ready};
use refund_desk_standins::driver;
use refund_desk_standins::load::{LoadPlan, run_load};
use refund_desk_standins::{FakeSlack, FakeStripe, wait_for};
use std::process::Stdio;
use std::time::Duration;

/// The real binary with Slack and Stripe stand-ins, Stripe's pace lifted on both sides (every card
/// must be up at the end), and the desk's log kept for when a test fails.
struct LoadedDesk {
    slack: FakeSlack,
    stripe: FakeStripe,
    dir: tempfile::TempDir,
    log_dir: tempfile::TempDir,
    desk: KillOnDrop,
    base: String,
}

impl LoadedDesk {
    async fn start() -> LoadedDesk {
        let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
        let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
        stripe.set_rate_limit(None);
        let (dir, log_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (desk, base) = Self::spawn(&slack, &stripe, &dir, &log_dir).await;
        LoadedDesk { slack, stripe, dir, log_dir, desk, base }
    }

    async fn spawn(
        slack: &FakeSlack,
        stripe: &FakeStripe,
        dir: &tempfile::TempDir,
        log_dir: &tempfile::TempDir,
    ) -> (KillOnDrop, String) {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        stripe.send_webhooks_to(&format!("{base}/stripe/webhook"), driver::WEBHOOK_SECRET);
        let log = std::fs::File::options().create(true).append(true).open(log_dir.path().join("desk.log")).unwrap();
        let child = desk_command(&slack.url, &stripe.url, dir.path())
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
            .env("STRIPE_RATE_LIMIT", "100000")
            .env("SLACK_APPROVERS", APPROVER)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let desk = KillOnDrop(child);
        wait_until_ready(port, Duration::from_secs(15)).await;
        (desk, base)
    }

    /// SIGTERM; the desk's exit code.
    async fn stop(&mut self) -> Option<i32> {
        terminate(&mut self.desk.0, Duration::from_secs(30)).await
    }

    /// A new desk process on the same data, once the last one has stopped.
    async fn restart(&mut self) {
        (self.desk, self.base) = Self::spawn(&self.slack, &self.stripe, &self.dir, &self.log_dir).await;
    }

    /// Waits until each of `ids` has a card, then checks none has two. On failure, says where
    /// the missing ones stand in the store and what the desk logged about them.
    async fn assert_one_card_each(&mut self, ids: &[String], deadline: Duration) {
        let slack = &self.slack;
        let all_carded = wait_for(deadline, || {
            let counts = slack.button_message_counts();
            ids.iter().all(|id| counts.contains_key(id)).then_some(())
        })
        .await;
        let counts = slack.button_message_counts();
        if all_carded.is_none() {
            let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
            self.stop().await;
            let log = std::fs::read_to_string(self.log_dir.path().join("desk.log")).unwrap_or_default();
            let related: Vec<&str> = log
                .lines()
                .filter(|l| missing.iter().any(|id| l.contains(id.as_str())) || l.contains("panicked"))
                .take(20)
                .collect();
            panic!(
                "{} of {} answered requests never got a card: {}\nthe desk's log about them:\n{}",
                missing.len(),
                ids.len(),
                explain(self.dir.path(), &missing).await,
                related.join("\n")
            );
        }
        let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "requests with more than one card: {doubled:?}");
    }
}

/// Where the requests stand in the stopped desk's store, and their outstanding jobs.
async fn explain(dir: &std::path::Path, ids: &[&String]) -> String {
    let store = refund_desk::storage::Store::open(dir).unwrap();
    let jobs = store.all_jobs().await.unwrap();
    let mut lines = vec![];
    for id in ids.iter().take(5) {
        let id = refund_desk::domain::RequestId::parse(id).unwrap();
        let request = store.get_request(id).await.unwrap();
        let pending: Vec<_> = jobs.iter().filter(|j| j.request_id == id).collect();
        lines.push(format!("{id}: {:?}, jobs {pending:?}", request.map(|r| r.status)));
    }
    lines.join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_for_thirty_seconds_are_all_answered_and_every_request_gets_one_card() {
    let _heavy = HEAVY.lock().await;
    let mut desk = LoadedDesk::start().await;
    let plan = LoadPlan {
        clients: 64,
        duration: Duration::from_secs(30),
        requester: REQUESTER.into(),
        approver: Some(APPROVER.into()),
        // Slack gives up after 3 s; an answer later than that is as good as none.
        answer_timeout: Duration::from_secs(3),
    };
    let report = run_load(&desk.base, &desk.slack, &desk.stripe, &plan).await;

    assert!(report.accepted.len() > 100, "too few requests to prove anything: {}", report.accepted.len());
    assert_eq!(report.failure_count, 0, "requests not answered: {:?}", report.failures);
    // The health checks run one after another for the whole load, each failing after 3 s
    // without an answer: none failing means /healthz never went 3 s unanswered.
    assert!(report.health_checks > 0, "/healthz was never asked");
    assert_eq!(report.health_failures, 0, "/healthz did not answer throughout");
    assert!(report.clicks > 0 && report.webhooks > 0, "the mix had no clicks or webhooks: {report:?}");
    let ids: Vec<String> = report.accepted.iter().map(|a| a.id.clone()).collect();
    desk.assert_one_card_each(&ids, Duration::from_secs(180)).await;
    assert_eq!(desk.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_load_exits_0_and_loses_no_answered_request() {
    let _heavy = HEAVY.lock().await;
    let mut desk = LoadedDesk::start().await;
    let plan = LoadPlan {
        clients: 32,
        duration: Duration::from_secs(8),
        requester: REQUESTER.into(),
        approver: None,
        answer_timeout: Duration::from_secs(3),
    };
    let load = tokio::spawn({
        let (base, slack, stripe, plan) = (desk.base.clone(), desk.slack.clone(), desk.stripe.clone(), plan.clone());
        async move { run_load(&base, &slack, &stripe, &plan).await }
    });
    // Stop while requests are still coming in and the job backlog is full.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while desk.slack.button_message_counts().len() < 50 {
        assert!(std::time::Instant::now() < until, "no cards were posted under load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(desk.stop().await, Some(0), "SIGTERM under load must exit 0");
    let report = load.await.unwrap();
    assert!(report.accepted.len() > 50, "too few requests answered to prove anything: {}", report.accepted.len());

    // Every request that was answered is on disk, and gets its one card after a restart.
    desk.restart().await;
    let ids: Vec<String> = report.accepted.iter().map(|a| a.id.clone()).collect();
    desk.assert_one_card_each(&ids, Duration::from_secs(120)).await;
    assert_eq!(desk.stop().await, Some(0));
}
