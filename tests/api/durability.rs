//! An answer to Slack waits for a real sync (`fdatasync`) of the write it acknowledges, not only
//! for sled's `sync_file_range`, which a power cut can undo.

use crate::helpers::{KillOnDrop, REQUESTER, desk_command, free_port, wait_until_ready};
use refund_desk::standins::driver::{self, SlackDriver};
use refund_desk::standins::{ChargeSpec, FakeSlack, FakeStripe};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every `fsync` and `fdatasync` of the desk is held up this long by strace.
const SYNC_DELAY: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_refund_is_answered_only_after_an_fdatasync_covers_it() {
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
    let mut child = KillOnDrop(traced.spawn().unwrap());
    wait_until_ready(port, Duration::from_secs(30)).await;

    let (charge, _) = stripe.add_charge(ChargeSpec::default());
    let driver = SlackDriver::new(format!("http://127.0.0.1:{port}"));
    let sent = Instant::now();
    let (status, answer) = driver.slash(REQUESTER, &format!("{charge} 5.00 duplicate")).await;
    let waited = sent.elapsed();

    assert_eq!(status, 200, "{answer}");
    assert!(answer["text"].as_str().unwrap_or_default().contains("R-"), "{answer}");
    assert!(
        waited >= SYNC_DELAY,
        "the answer came after {waited:?}, before the {SYNC_DELAY:?} fdatasync that makes it durable"
    );
    // SIGTERM goes to the desk, strace's child; strace then exits with the desk's exit code.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.0.id())).unwrap();
    let desk_pid = children.split_whitespace().next().expect("strace runs the desk");
    assert!(std::process::Command::new("kill").args(["-TERM", desk_pid]).status().unwrap().success());
    let until = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < until, "the desk was still running 30 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
}
