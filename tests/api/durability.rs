//! An acknowledgement waits for a real sync (`fdatasync`) of the write it acknowledges, not only
//! for sled's `sync_file_range`, which a power cut can undo. The real binary runs under strace,
//! which holds up every `fsync` and `fdatasync`; an answer that came sooner did not wait for one.

use crate::helpers::{
    HEAVY, KillOnDrop, REQUESTER, children_of, desk_command, free_port, wait_for_exit, wait_until_ready,
};
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every `fsync` and `fdatasync` of the desk is held up this long by strace.
const SYNC_DELAY: Duration = Duration::from_millis(300);

/// A desk whose every sync takes [`SYNC_DELAY`], with its stand-ins.
struct SlowSyncDesk {
    strace: KillOnDrop,
    base: String,
    stripe: FakeStripe,
    _slack: FakeSlack,
    _dir: tempfile::TempDir,
}

impl SlowSyncDesk {
    async fn start() -> SlowSyncDesk {
        assert!(
            std::process::Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()),
            "this test needs strace (apt-get install strace; .ci/run installs it)"
        );
        let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
        let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let desk = desk_command(&slack.url, &stripe.url, dir.path());
        let delay = format!("inject=fsync,fdatasync:delay_enter={}", SYNC_DELAY.as_micros());
        let mut traced = std::process::Command::new("strace");
        traced
            .args(["-f", "--seccomp-bpf", "-qq", "-o", "/dev/null", "-e", "trace=fsync,fdatasync", "-e", &delay])
            .arg(desk.get_program())
            .args(desk.get_args())
            .env_clear()
            .envs(desk.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let strace = KillOnDrop(traced.spawn().unwrap());
        wait_until_ready(port, Duration::from_secs(30)).await;
        let base = format!("http://127.0.0.1:{port}");
        stripe.send_webhooks_to(&format!("{base}/stripe/webhook"), driver::WEBHOOK_SECRET);
        SlowSyncDesk { strace, base, stripe, _slack: slack, _dir: dir }
    }

    /// SIGTERM to the desk, strace's child; strace then exits with the desk's exit code.
    async fn stop(mut self) -> Option<i32> {
        let desk = *children_of(self.strace.0.id()).first().expect("strace runs the desk");
        assert!(std::process::Command::new("kill").args(["-TERM", &desk.to_string()]).status().unwrap().success());
        wait_for_exit(&mut self.strace.0, Duration::from_secs(30)).await
    }
}

#[tokio::test]
async fn a_refund_is_answered_only_after_an_fdatasync() {
    let _heavy = HEAVY.lock().await;
    let desk = SlowSyncDesk::start().await;
    let (charge, _) = desk.stripe.add_charge(ChargeSpec::default());
    let driver = SlackDriver::new(desk.base.clone());

    let sent = Instant::now();
    let (status, answer) = driver.slash(REQUESTER, &format!("{charge} 5.00 duplicate")).await;
    let waited = sent.elapsed();

    assert_eq!(status, 200, "{answer}");
    assert!(answer["text"].as_str().unwrap_or_default().contains("R-"), "{answer}");
    assert!(
        waited >= SYNC_DELAY,
        "the answer came after {waited:?}, before the {SYNC_DELAY:?} fdatasync that makes it durable"
    );
    assert_eq!(desk.stop().await, Some(0));
}

#[tokio::test]
async fn a_webhook_delivered_twice_at_once_is_acknowledged_twice_only_after_its_sync() {
    let _heavy = HEAVY.lock().await;
    let desk = SlowSyncDesk::start().await;
    let (charge, _) = desk.stripe.add_charge(ChargeSpec::default());
    // A refund made at Stripe, and the event Stripe sends for it.
    let refund = desk.stripe.refund_made_outside(&charge, Some(500), &[]);
    let event = desk.stripe.refund_event(&refund, "refund.updated", "succeeded", None).unwrap();

    // The second delivery finds the event recorded by the first, whose sync is still under way.
    let timed = |stripe: FakeStripe, event: serde_json::Value| async move {
        let sent = Instant::now();
        (stripe.deliver(&event).await, sent.elapsed())
    };
    let (first, second) =
        tokio::join!(timed(desk.stripe.clone(), event.clone()), timed(desk.stripe.clone(), event.clone()));

    for (status, waited) in [first, second] {
        assert_eq!(status, Ok(200));
        assert!(waited >= SYNC_DELAY, "a delivery was acknowledged after {waited:?}, before the event was on disk");
    }
    assert_eq!(desk.stop().await, Some(0));
}
