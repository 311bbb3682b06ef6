//! Backups and restore of the embedded store, the operator commands while the service runs,
//! and a corrupt store at start-up.

use crate::helpers::*;
use refund_desk::domain::RequestStatus;
use refund_desk::storage::Store;
use refund_desk_standins::driver;
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe, wait_for};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_refund-desk");

/// Backups are the embedded store's (PostgreSQL has its own tools): `true` when this run's
/// store is PostgreSQL and the test does not apply.
fn on_postgres(app: &TestApp) -> bool {
    let skip = app.database.is_some();
    if skip {
        eprintln!(
            "skipped on PostgreSQL: backups here are the embedded store's; PostgreSQL is backed up with its own tools"
        );
    }
    skip
}

#[tokio::test]
async fn a_backup_taken_under_load_restores_to_one_consistent_moment_whose_audit_verifies() {
    let _heavy = HEAVY.lock().await;
    let app = TestApp::spawn().await;
    if on_postgres(&app) {
        return;
    }
    // A store large enough that reading it takes a while, so requests move while it is read.
    let old = |n: u64| {
        let new = refund_desk::domain::NewRequest::full_refund(
            refund_desk::domain::UserId::parse("U0OLDREQ01").unwrap(),
            "C1",
            refund_desk::domain::PaymentRef::parse("ch_old").unwrap(),
            refund_desk::domain::RefundReason::Duplicate,
        );
        let mut r =
            refund_desk::domain::RefundRequest::new(refund_desk::domain::RequestId::new(n), new, chrono::Utc::now());
        r.status = RequestStatus::Succeeded;
        r
    };
    for n in 1001..31_001 {
        app.store().import_request(&old(n)).await.unwrap();
    }
    app.store().flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("under-load.backup");
    // Requests keep coming (and being checked, carded, approved) while the backup is taken.
    let load: Vec<_> = (0..60)
        .map(|n| {
            let (driver, charge) = (app.driver.clone(), app.add_charge(ChargeSpec::default()));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(n * 5)).await;
                driver.slash(REQUESTER, &format!("{charge} 25.00 duplicate")).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let started = std::time::Instant::now();
    let manifest = app.store().backup_to(&file).await.unwrap();
    eprintln!("backup of a 30,000-request store under load: {:?}, {} bytes", started.elapsed(), manifest.bytes);
    for answer in load {
        assert_eq!(answer.await.unwrap().0, 200, "every request answered while the backup ran");
    }
    app.wait_until_idle().await;

    let restored_dir = dir.path().join("restored");
    let said = refund_desk::admin::restore(&file, &restored_dir).await.unwrap();
    assert!(said.contains("the chain verifies"), "{said}");
    let restored = Store::open(&restored_dir).unwrap();
    assert_eq!(restored.verify_audit().await.unwrap().problem, None);
    // One moment: the restored trail is the live one's beginning, and each restored request
    // is in the state its last restored audit entry says.
    let (live, then) = (app.store().audit_entries().await.unwrap(), restored.audit_entries().await.unwrap());
    assert!(!then.is_empty() && then.len() <= live.len());
    assert_eq!(then[..], live[..then.len()], "the backup's trail is a prefix of the live one");
    assert_eq!(manifest.audit_head.as_ref().map(|(seq, _)| *seq), then.last().map(|e| e.seq));
    let mut last_state = HashMap::new();
    for entry in &then {
        last_state.insert(entry.request_id, entry.to);
    }
    let requests = restored.all_requests().await.unwrap();
    assert_eq!(requests.len() as u64, manifest.next_request_number - 1001, "every request numbered is there");
    for r in requests.iter().filter(|r| r.id.number() > 31_000) {
        assert_eq!(last_state.get(&r.id), Some(&r.status), "{} matches its audit trail", r.id);
    }
    assert!(!last_state.is_empty(), "some of the load was in the backup");
    // New jobs and audit entries go on above the backup's.
    let live_jobs = restored.all_jobs().await.unwrap().iter().map(|j| j.id).max().unwrap_or(0);
    let next = restored
        .insert_request(
            refund_desk::domain::NewRequest::full_refund(
                refund_desk::domain::UserId::parse(REQUESTER).unwrap(),
                "C1",
                refund_desk::domain::PaymentRef::parse("ch_1").unwrap(),
                refund_desk::domain::RefundReason::Duplicate,
            ),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        next.id.number(),
        manifest.next_request_number + refund_desk::storage::sled::backup::NUMBERS_SKIPPED_AFTER_RESTORE,
        "numbers the lost store may have used after the backup are skipped"
    );
    let new_job =
        restored.all_jobs().await.unwrap().into_iter().filter(|j| j.request_id == next.id).map(|j| j.id).min();
    assert!(new_job.unwrap() > live_jobs);
    assert_eq!(restored.verify_audit().await.unwrap().problem, None, "the chain goes on");
}

#[tokio::test]
async fn a_backup_altered_after_it_was_taken_or_a_used_directory_is_refused() {
    let app = TestApp::spawn().await;
    if on_postgres(&app) {
        return;
    }
    app.waiting_request().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.backup");
    app.store().backup_to(&file).await.unwrap();
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("something"), "x").unwrap();
    let refused = refund_desk::admin::restore(&file, &used).await.unwrap_err().to_string();
    assert!(refused.contains("is not empty"), "{refused}");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let altered = refund_desk::admin::restore(&file, &dir.path().join("new")).await.unwrap_err().to_string();
    assert!(altered.contains("does not match its manifest"), "{altered}");
    assert!(!dir.path().join("new").exists(), "nothing was restored");
}

#[tokio::test]
async fn the_service_backs_up_on_its_own_keeps_the_newest_and_tells_finance_when_it_cannot() {
    let app = TestApp::spawn_configured("", |s| {
        if let Some(dir) = s.store_dir() {
            let dir = dir.join("backups");
            s.backups = Some(refund_desk::config::BackupSettings { dir, every: Duration::from_millis(200), keep: 2 });
        }
    })
    .await;
    if on_postgres(&app) {
        return;
    }
    app.waiting_request().await;
    let backups = app.data_dir.path().join("backups");
    // Three rounds at least; two kept, each with its manifest.
    let kept = wait_for(DEADLINE, || {
        let n = refund_desk::desk::backup::backups_in(&backups).ok()?;
        (n.len() == 2 && std::fs::read_dir(&backups).ok()?.count() == 4).then_some(n)
    })
    .await
    .expect("two backups kept");
    for file in &kept {
        assert!(refund_desk::storage::sled::backup::BackupManifest::path_for(file).exists());
    }
    // The directory becomes a file: the next round fails, and finance hears of it.
    std::fs::remove_dir_all(&backups).unwrap();
    std::fs::write(&backups, "not a directory").unwrap();
    let alert = wait_for(DEADLINE, || {
        app.slack.messages_in(FINANCE).into_iter().find(|m| m.text.contains("could not back up its store"))
    })
    .await;
    assert!(alert.is_some(), "finance is told the backup failed");
}

#[tokio::test]
async fn jobs_list_audit_verify_and_backup_work_while_the_service_runs_and_a_restore_starts() {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let start = |data: &std::path::Path, port: u16| {
        let mut desk = desk_command(&slack.url, &stripe.url, data);
        desk.env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        KillOnDrop(desk.spawn().unwrap())
    };
    let mut desk = start(&data, port);
    wait_until_ready(port, DEADLINE).await;
    let base = format!("http://127.0.0.1:{port}");
    let slack_driver = driver::SlackDriver::new(base);
    let charge = stripe.add_charge(ChargeSpec::default()).0;
    let (_, answer) = slack_driver.slash(REQUESTER, &format!("{charge} 25.00 duplicate")).await;
    let id = request_id_in(answer["text"].as_str().unwrap_or_default());
    card_in(&slack, id).await;

    let run =
        |args: &[&str]| Command::new(BIN).args(args).env_clear().env("REFUND_DESK_DATA_DIR", &data).output().unwrap();
    let text = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let list = run(&["jobs", "list", "--all"]);
    assert!(list.status.success(), "{}", text(&list));
    let verify = run(&["audit", "verify"]);
    assert!(verify.status.success() && text(&verify).contains("intact"), "{}", text(&verify));
    let export = run(&["audit", "export", "--format", "json"]);
    assert!(export.status.success() && text(&export).contains(&id.to_string()), "{}", text(&export));
    let file = dir.path().join("now.backup");
    let backup = run(&["backup", "--to", file.to_str().unwrap()]);
    assert!(backup.status.success() && text(&backup).contains("SHA-256"), "{}", text(&backup));
    assert_eq!(terminate(&mut desk.0, DEADLINE).await, Some(0));

    let restored = dir.path().join("restored");
    let restore = Command::new(BIN)
        .args(["restore", "--from", file.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(restore.status.success() && text(&restore).contains("Restored"), "{}", text(&restore));
    // The restored store starts (its refunds checked against Stripe first) and holds the request.
    let port = free_port();
    let mut again = start(&restored, port);
    wait_until_ready(port, DEADLINE).await;
    assert_eq!(terminate(&mut again.0, DEADLINE).await, Some(0));
    let store = Store::open(&restored).unwrap();
    assert_eq!(store.get_request(id).await.unwrap().map(|r| r.status), Some(RequestStatus::AwaitingApproval));
    assert_eq!(store.as_sled().unwrap().restored_at().unwrap(), None, "checked, and the mark is gone");
}

#[test]
fn a_corrupt_store_stops_start_up_with_one_line_naming_it_and_the_restore_command() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&conf, &bytes).unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let out = desk_command("http://127.0.0.1:9", "http://127.0.0.1:9", dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("cannot be read: it is corrupt") && last.contains("refund-desk restore --from"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("corrupt")).count(), 1, "{stderr}");
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing deleted or added");
    assert_eq!(std::fs::read(&conf).unwrap(), bytes, "nothing repaired");
}

#[tokio::test]
async fn a_store_whose_files_lost_data_is_refused_at_start_not_silently_run_on() {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut desk = KillOnDrop(
        desk_command(&slack.url, &stripe.url, dir.path())
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_ready(port, DEADLINE).await;
    let slack_driver = driver::SlackDriver::new(format!("http://127.0.0.1:{port}"));
    let charge = stripe.add_charge(ChargeSpec::default()).0;
    let (_, answer) = slack_driver.slash(REQUESTER, &format!("{charge} 25.00 duplicate")).await;
    card_in(&slack, request_id_in(answer["text"].as_str().unwrap_or_default())).await;
    assert_eq!(terminate(&mut desk.0, DEADLINE).await, Some(0));
    // The log loses its tail, as a damaged disk would have it: sled alone opens what is left.
    let db = dir.path().join("db");
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(100).unwrap();
    let log = dir.path().join("second-start.log");
    let mut again = KillOnDrop(
        desk_command(&slack.url, &stripe.url, dir.path())
            .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // A desk that started on what was left would still be running at the deadline.
    let code = wait_for_exit(&mut again.0, DEADLINE).await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_ne!(code, Some(0), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("sled dropped what it could not read") && last.contains("refund-desk restore"), "{stderr}");
}

#[tokio::test]
async fn a_request_refunded_after_the_backup_is_not_refunded_again_on_the_restored_store() {
    let mut app = TestApp::spawn().await;
    if on_postgres(&app) {
        return;
    }
    // Part of the charge, so Stripe would take a second refund of it.
    let charge = app.add_charge(ChargeSpec::default());
    let id = app.request_refund(&format!("{charge} 10.00 duplicate")).await;
    app.wait_for_status(id, RequestStatus::AwaitingApproval).await;
    let card = app.card(id).await;
    let store = app.store();
    wait_for_async(DEADLINE, || async { store.get_request(id).await.unwrap()?.card }).await.expect("card recorded");
    drop(store);
    let saved = tempfile::tempdir().unwrap();
    let file = saved.path().join("before-the-refund.backup");
    app.store().backup_to(&file).await.unwrap();
    // After the backup, the lost store approved it and Stripe refunded it.
    app.approve(APPROVER, id, &card).await;
    app.wait_for_status(id, RequestStatus::Submitted).await;
    assert_eq!(app.stripe.refunds_for(&id.to_string()).len(), 1);
    app.stop().await;

    // The store is lost; the backup is restored in its place, days later (Stripe forgot the key).
    let restored = saved.path().join("restored");
    refund_desk::admin::restore(&file, &restored).await.unwrap();
    for entry in std::fs::read_dir(app.data_dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.unwrap();
    }
    for entry in std::fs::read_dir(&restored).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), app.data_dir.path().join(entry.file_name())).unwrap();
    }
    app.stripe.forget_idempotency_keys();
    app.restart().await;
    assert_eq!(app.request(id).await.status, RequestStatus::AwaitingApproval, "as the backup had it");
    // The desk's clock says so too: a request younger than Stripe's 24 hours needs no look,
    // since Stripe would still answer for its key.
    app.app.as_ref().unwrap().context().advance_clock(std::time::Duration::from_secs(25 * 3600));

    // Approved again, it finds the refund Stripe made and makes none.
    app.approve(APPROVER, id, &card).await;
    let store = app.store();
    let recorded =
        wait_for_async(DEADLINE, || async { store.get_request(id).await.unwrap().and_then(|r| r.refund) }).await;
    assert!(recorded.is_some(), "the existing refund is recorded");
    app.wait_until_idle().await;
    assert_eq!(app.stripe.refunds_for(&id.to_string()).len(), 1, "one refund, not two");
    assert_eq!(app.stripe.refund_posts().len(), 1, "no second refund was even asked for");
}
