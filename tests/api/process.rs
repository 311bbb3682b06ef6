//! The real binary: start-up errors and graceful shutdown.

use refund_desk_standins::driver;
use refund_desk_standins::{FakeSlack, FakeStripe};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_refund-desk");

#[test]
fn a_missing_setting_stops_start_up_with_one_line_naming_it() {
    let out = Command::new(BIN).arg("serve").env_clear().env("SLACK_SIGNING_SECRET", "x").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SLACK_BOT_TOKEN is required"), "{stderr}");
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly_with_exit_0() {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = crate::helpers::desk_command(&slack.url, &stripe.url, dir.path())
        .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the service never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    // The database was closed cleanly: it opens again.
    refund_desk::storage::Store::open(dir.path()).unwrap();
}

#[tokio::test]
async fn jobs_list_and_retry_work_on_a_stopped_desks_database() {
    let dir = tempfile::tempdir().unwrap();
    let job_id = {
        let store = refund_desk::storage::Store::open(dir.path()).unwrap();
        let new = refund_desk::domain::NewRequest::full_refund(
            refund_desk::domain::UserId::parse("U0REQUEST1").unwrap(),
            "C1",
            refund_desk::domain::PaymentRef::parse("ch_1").unwrap(),
            refund_desk::domain::RefundReason::Duplicate,
        );
        store.insert_request(new, chrono::Utc::now()).await.unwrap();
        let mut job = store.all_jobs().await.unwrap().remove(0);
        job.parked = true;
        job.attempts = 12;
        job.last_error = Some("Stripe is unavailable: HTTP 503".into());
        store.reschedule_job(&job).await.unwrap();
        job.id
    };
    let run = |args: &[&str]| {
        Command::new(BIN).args(args).env_clear().env("REFUND_DESK_DATA_DIR", dir.path()).output().unwrap()
    };
    let list = run(&["jobs", "list"]);
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(text.contains(&job_id.to_string()) && text.contains("R-1001") && text.contains("HTTP 503"), "{text}");

    let retry = run(&["jobs", "retry", &job_id.to_string()]);
    assert!(retry.status.success(), "{}", String::from_utf8_lossy(&retry.stderr));
    let store = refund_desk::storage::Store::open(dir.path()).unwrap();
    let job = store.find_job(job_id).await.unwrap().unwrap();
    assert!(!job.parked && job.attempts == 0);

    // While something holds the database and serves no admin socket, the command says why it
    // cannot run (a running desk answers through its socket: see `backups.rs`).
    let locked = run(&["jobs", "list"]);
    assert!(!locked.status.success());
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("is in use, but the running refund-desk does not answer"),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    drop(store);
    let missing = run(&["jobs", "retry", "424242"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("there is no job 424242"));
}

#[tokio::test]
async fn audit_verify_passes_an_untouched_trail_and_catches_an_edit_made_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = refund_desk::storage::Store::open(dir.path()).unwrap();
        for charge in ["ch_1", "ch_2"] {
            let new = refund_desk::domain::NewRequest::full_refund(
                refund_desk::domain::UserId::parse("U0REQUEST1").unwrap(),
                "C1",
                refund_desk::domain::PaymentRef::parse(charge).unwrap(),
                refund_desk::domain::RefundReason::Duplicate,
            );
            store.insert_request(new, chrono::Utc::now()).await.unwrap();
        }
    }
    let run = |args: &[&str]| {
        Command::new(BIN).args(args).env_clear().env("REFUND_DESK_DATA_DIR", dir.path()).output().unwrap()
    };
    let verify = run(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact: 2 entries"));

    let json = run(&["audit", "export", "--format", "json"]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(json.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["request_id"].as_str(), lines[1]["request_id"].as_str()), (Some("R-1001"), Some("R-1002")));
    let csv = String::from_utf8(run(&["audit", "export", "--since", "2000-01-01"]).stdout).unwrap();
    assert!(csv.starts_with("seq,at,request_id,actor") && csv.lines().count() == 3, "{csv}");
    let none = String::from_utf8(run(&["audit", "export", "--since", "2999-01-01"]).stdout).unwrap();
    assert_eq!(none.lines().count(), 1, "only the header: {none}");

    // Someone edits an entry in the database directly.
    {
        let db = sled::open(dir.path()).unwrap();
        let audit = db.open_tree("audit").unwrap();
        let (key, value) = audit.iter().find(|kv| kv.as_ref().unwrap().0.len() == 8).unwrap().unwrap();
        let mut entry: serde_json::Value = serde_json::from_slice(&value).unwrap();
        entry["actor"] = serde_json::json!({ "user": "U0SOMEONE1" });
        audit.insert(key, serde_json::to_vec(&entry).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let verify = run(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("was altered"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test]
async fn check_reaches_slack_stripe_and_smtp_and_says_which_fails() {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let smtp = refund_desk_standins::SmtpSink::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let check = |bot_token: &str| {
        let mut cmd = crate::helpers::desk_command(&slack.url, &stripe.url, dir.path());
        cmd.arg("check").env("SLACK_BOT_TOKEN", bot_token).env("SMTP_URL", smtp.url());
        tokio::process::Command::from(cmd).env("EMAIL_FROM", driver::EMAIL_FROM).output()
    };
    let good = check(driver::BOT_TOKEN).await.unwrap();
    let out = String::from_utf8_lossy(&good.stdout).to_string();
    assert!(good.status.success(), "{out}{}", String::from_utf8_lossy(&good.stderr));
    for line in ["config: ok", "slack: ok (team T00000001", "stripe: ok (test mode)", "smtp: ok (sending as"] {
        assert!(out.contains(line), "{line} missing: {out}");
    }
    assert!(
        out.contains("stripe permission rak_refund_write (make refunds and read them back): ok (granted)"),
        "{out}"
    );
    let bad = check("xoxb-revoked-token").await.unwrap();
    let out = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1));
    assert!(out.contains("slack: FAILED") && out.contains("invalid_auth") && out.contains("stripe: ok"), "{out}");
    // A restricted key without an optional permission passes, and says what is missing.
    stripe.restrict_key(Some(&["rak_charge_read", "rak_payment_intent_read", "rak_refund_write", "rak_customer_read"]));
    let optional = check(driver::BOT_TOKEN).await.unwrap();
    let out = String::from_utf8_lossy(&optional.stdout).to_string();
    assert!(optional.status.success(), "{out}");
    for missing in ["rak_dispute_read", "rak_radar_early_fraud_warning_read"] {
        assert!(out.lines().any(|l| l.contains(missing) && l.contains("missing, optional")), "{missing}: {out}");
    }
    // Without one the desk needs, it fails, and names every missing one at once.
    stripe.restrict_key(Some(&["rak_charge_read", "rak_customer_read"]));
    let required = check(driver::BOT_TOKEN).await.unwrap();
    let out = String::from_utf8_lossy(&required.stdout).to_string();
    assert_eq!(required.status.code(), Some(1), "{out}");
    for missing in ["rak_payment_intent_read", "rak_refund_write"] {
        assert!(out.lines().any(|l| l.contains(missing) && l.contains("FAILED: missing")), "{missing}: {out}");
    }
    assert!(out.lines().any(|l| l.contains("rak_charge_read") && l.contains("granted")), "{out}");
    assert!(stripe.refunds().is_empty(), "checking makes no refund");
}

#[test]
fn check_names_every_missing_or_malformed_setting_at_once() {
    let out = Command::new(BIN)
        .arg("check")
        .env_clear()
        .env("SLACK_SIGNING_SECRET", "x")
        .env("STRIPE_SECRET_KEY", "pk_test_publishable")
        .env("REFUND_DESK_JOB_ATTEMPTS", "many")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for name in [
        "SLACK_BOT_TOKEN",
        "SLACK_FINANCE_CHANNEL",
        "SLACK_APPROVERS",
        "STRIPE_SECRET_KEY is not valid",
        "REFUND_DESK_JOB_ATTEMPTS is not valid",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with("config: FAILED") && l.contains(name)), "{name}: {stdout}");
    }
    assert_eq!(stdout.lines().count(), 5, "one line each: {stdout}");
}

#[tokio::test]
async fn check_says_which_slack_scope_is_missing_and_whether_the_bot_is_in_the_finance_channel() {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let check = || {
        let mut cmd = crate::helpers::desk_command(&slack.url, &stripe.url, dir.path());
        cmd.arg("check");
        tokio::process::Command::from(cmd).output()
    };
    let good = check().await.unwrap();
    let out = String::from_utf8_lossy(&good.stdout).to_string();
    assert!(good.status.success(), "{out}");
    assert!(out.contains("slack scopes: ok") && out.contains("slack finance channel: ok (the bot is in"), "{out}");

    slack.grant_scopes(&["commands", "chat:write", "channels:read"]);
    slack.remove_bot_from(driver::FINANCE_CHANNEL);
    let bad = check().await.unwrap();
    let out = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(out.lines().any(|l| l.starts_with("slack scopes: FAILED") && l.contains("im:write")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("slack finance channel: FAILED") && l.contains("/invite")), "{out}");

    // Without the scope to look the channel up, check names the scope, not the setting.
    slack.grant_scopes(&["commands", "chat:write"]);
    let out = String::from_utf8_lossy(&check().await.unwrap().stdout).to_string();
    let line = out.lines().find(|l| l.starts_with("slack finance channel: FAILED")).expect(&out);
    assert!(line.contains("channels:read") && !line.contains("check SLACK_FINANCE_CHANNEL"), "{line}");
}
