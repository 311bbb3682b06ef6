//! `TestApp`: one desk plus its stand-ins, with one method per thing a person (or Stripe) does.

use refund_desk::app::Application;
use refund_desk::config::JobSettings;
use refund_desk::domain::{RefundRequest, RequestId, RequestStatus};
use refund_desk::storage::Store;
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::slack::Posted;
pub use refund_desk_standins::wait_for_async;
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe, SmtpSink, wait_for};
use serde_json::Value;
use std::time::Duration;
use tempfile::TempDir;

pub const REQUESTER: &str = "U0REQUEST1";
pub const APPROVER: &str = "U0APPROVE1";
pub const APPROVER_2: &str = "U0APPROVE2";
pub const OUTSIDER: &str = "U0OUTSIDE1";
pub const FINANCE: &str = driver::FINANCE_CHANNEL;
/// Long enough for a loaded 2-core CI machine; polling returns as soon as the state is reached.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub struct TestApp {
    pub app: Option<Application>,
    pub slack: FakeSlack,
    pub stripe: FakeStripe,
    pub smtp: SmtpSink,
    pub driver: SlackDriver,
    pub data_dir: TempDir,
    /// A PostgreSQL schema of this test's own, when the suite runs on PostgreSQL
    /// (`REFUND_DESK_TEST_DATABASE_URL`); the desk then keeps its store there, not in `data_dir`.
    pub database: Option<secrecy::SecretString>,
    policy: refund_desk::domain::policy::Policy,
    /// Applied to the settings at every start.
    customize: Customize,
}

/// A change to the desk's settings, applied at every start.
pub type Customize = std::sync::Arc<dyn Fn(&mut refund_desk::config::Settings) + Send + Sync>;

fn fast_jobs() -> JobSettings {
    JobSettings {
        first_retry: Duration::from_millis(50),
        max_retry: Duration::from_millis(500),
        ..JobSettings::default()
    }
}

impl TestApp {
    /// A desk where the requester is an approver too, so "never your own request" is tested
    /// against someone who could otherwise approve.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with_policy("").await
    }

    /// A desk with `[policy]` TOML and `customize` applied to its settings from the start.
    pub async fn spawn_configured(
        policy_toml: &str,
        customize: impl Fn(&mut refund_desk::config::Settings) + Send + Sync + 'static,
    ) -> TestApp {
        let mut app = TestApp::build(policy_toml).await;
        app.customize = std::sync::Arc::new(customize);
        app.start().await;
        app
    }

    /// A desk with `[policy]` TOML (the contract's form) applied.
    pub async fn spawn_with_policy(policy_toml: &str) -> TestApp {
        let mut app = TestApp::build(policy_toml).await;
        app.start().await;
        app
    }

    async fn build(policy_toml: &str) -> TestApp {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let slack = FakeSlack::start(driver::BOT_TOKEN).await.unwrap();
        let stripe = FakeStripe::start(driver::STRIPE_KEY).await.unwrap();
        let smtp = SmtpSink::start().await.unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        let table: toml::Table = policy_toml.parse().expect("valid TOML");
        let policy =
            refund_desk::config::parse_policy(table.get("policy").and_then(|p| p.as_table())).expect("valid policy");
        let database = if refund_desk_standins::postgres::integration_on_postgres() {
            refund_desk_standins::postgres::fresh_database_url().await
        } else {
            None
        };
        TestApp {
            app: None,
            driver: SlackDriver::new(String::new()),
            slack,
            stripe,
            smtp,
            data_dir,
            database,
            policy,
            customize: std::sync::Arc::new(|_| {}),
        }
    }

    async fn start(&mut self) {
        let approvers = format!("{APPROVER},{APPROVER_2},{REQUESTER}");
        let mut settings = refund_desk::demo::desk_settings(
            &self.slack.url,
            &self.stripe.url,
            Some(&self.smtp.url()),
            self.data_dir.path(),
            &approvers,
            fast_jobs(),
        );
        settings.policy = self.policy.clone();
        if let Some(url) = &self.database {
            settings.store =
                refund_desk::config::StoreSettings::Postgres { url: url.clone(), lease: Duration::from_secs(60) };
        }
        (self.customize)(&mut settings);
        let app = Application::build(settings).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        self.stripe.send_webhooks_to(&format!("{base}/stripe/webhook"), driver::WEBHOOK_SECRET);
        self.driver = SlackDriver::new(base).with_response_urls(self.slack.response_url_base());
        self.app = Some(app);
    }

    /// Restarts the desk with `customize` applied to its settings.
    pub async fn reconfigure(
        &mut self,
        customize: impl Fn(&mut refund_desk::config::Settings) + Send + Sync + 'static,
    ) {
        self.customize = std::sync::Arc::new(customize);
        self.restart().await;
    }

    /// Stops the desk gracefully and starts it again on the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.unwrap();
        }
    }

    /// The desk's store, opened afresh with no desk running: from its files (sled) or its
    /// database (PostgreSQL).
    pub async fn open_store_stopped(&self) -> Store {
        match &self.database {
            Some(url) => {
                use secrecy::ExposeSecret;
                let store =
                    refund_desk::storage::postgres::PgStore::connect(url.expose_secret(), Duration::from_secs(60));
                Store::Postgres(store.await.expect("the database opens"))
            }
            None => Store::open(self.data_dir.path()).expect("the store's files open"),
        }
    }

    pub fn store(&self) -> Store {
        self.app.as_ref().expect("running").context().store.clone()
    }

    pub fn add_charge(&self, spec: ChargeSpec) -> String {
        self.stripe.add_charge(spec).0
    }

    /// `/refund <text>` as `user`; the private answer's text.
    pub async fn slash_refund(&self, user: &str, text: &str) -> String {
        let (status, body) = self.driver.slash(user, text).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["response_type"], "ephemeral", "answers to /refund are private: {body}");
        body["text"].as_str().unwrap_or_default().to_string()
    }

    /// `/refund <text>` that must be accepted; returns the new request's id.
    pub async fn request_refund(&self, text: &str) -> RequestId {
        request_id_in(&self.slash_refund(REQUESTER, text).await)
    }

    pub async fn request(&self, id: RequestId) -> RefundRequest {
        self.store().get_request(id).await.unwrap().expect("stored")
    }

    pub async fn wait_for_status(&self, id: RequestId, status: RequestStatus) -> RefundRequest {
        let store = self.store();
        let reached =
            wait_for_async(DEADLINE, || async { store.get_request(id).await.unwrap().filter(|r| r.status == status) })
                .await;
        match reached {
            Some(request) => request,
            None => panic!("{id} never reached {status:?}; it is {:?}", self.request(id).await.status),
        }
    }

    /// Waits until the request's card is in the finance channel.
    pub async fn card(&self, id: RequestId) -> Posted {
        card_in(&self.slack, id).await
    }

    /// A request for a fresh $25.00 charge, waiting for approval; returns it and its card.
    pub async fn waiting_request(&self) -> (RequestId, Posted) {
        let charge = self.add_charge(ChargeSpec::default());
        let id = self.request_refund(&format!("{charge} 25.00 duplicate customer charged twice")).await;
        self.wait_for_status(id, RequestStatus::AwaitingApproval).await;
        let card = self.card(id).await;
        // Slack shows the card a moment before the desk records where it is; jobs that reply in
        // its thread need the record.
        let store = self.store();
        let recorded = wait_for_async(DEADLINE, || async { store.get_request(id).await.unwrap()?.card }).await;
        assert_eq!(recorded.map(|c| c.ts), Some(card.ts.clone()), "the desk records the card it posted");
        (id, card)
    }

    /// A request approved and submitted to Stripe; returns it and its card.
    pub async fn submitted_request(&self) -> (RequestId, Posted) {
        let (id, card) = self.waiting_request().await;
        self.approve(APPROVER, id, &card).await;
        // Submitted, or already Pending: Stripe's `refund.created` (pending) may be read from its
        // events before the test looks.
        let store = self.store();
        let sent = wait_for_async(DEADLINE, || async {
            let request = store.get_request(id).await.unwrap()?;
            matches!(request.status, RequestStatus::Submitted | RequestStatus::Pending).then_some(())
        })
        .await;
        assert!(sent.is_some(), "{id} never reached Stripe; it is {:?}", self.request(id).await.status);
        (id, card)
    }

    pub async fn click(&self, user: &str, action: &str, id: RequestId, card: &Posted) -> u16 {
        self.driver.click(user, action, &id.to_string(), &card.ts).await
    }

    pub async fn approve(&self, user: &str, id: RequestId, card: &Posted) {
        assert_eq!(self.click(user, "refund_approve", id, card).await, 200);
    }

    /// The requester (an approver too) clicks Approve on their own request: told privately
    /// that someone else must, and nothing changes.
    pub async fn approve_own_request_and_be_refused(&self, id: RequestId, card: &Posted) {
        self.approve(REQUESTER, id, card).await;
        let note = wait_for(DEADLINE, || self.slack.ephemerals().pop()).await.expect("told privately");
        assert_eq!(note["user"], REQUESTER);
        assert!(note["text"].as_str().unwrap().contains("someone else"), "{note}");
        self.wait_until_idle().await;
        assert_eq!(self.request(id).await.status, RequestStatus::AwaitingApproval);
        assert!(self.stripe.refund_posts().is_empty());
    }

    /// Approves and lets Stripe confirm: the request ends succeeded.
    pub async fn approve_and_settle(&self, id: RequestId) {
        let card = self.card(id).await;
        self.approve(APPROVER, id, &card).await;
        self.wait_for_status(id, RequestStatus::Submitted).await;
        assert_eq!(self.deliver_stripe_event(&self.refund_event(id, "refund.updated", "succeeded").await).await, 200);
        self.wait_for_status(id, RequestStatus::Succeeded).await;
    }

    /// Waits until every side effect has run: no job is left that is due within a minute (a
    /// refund's read-back waits an hour; parked jobs wait for a person).
    pub async fn wait_until_idle(&self) {
        let store = self.store();
        // The desk's clock, which tests may have moved forward.
        let ctx = self.app.as_ref().expect("running").context();
        let later = || ctx.now() + chrono::Duration::seconds(60);
        let idle = wait_for_async(DEADLINE, || async {
            store.all_jobs().await.unwrap().iter().all(|j| j.parked || j.not_before > later()).then_some(())
        })
        .await;
        if idle.is_none() {
            panic!("jobs still queued: {:?}", store.all_jobs().await.unwrap());
        }
    }

    /// Stripe sends `kind` for the request's refund with `status`; returns the HTTP status.
    pub async fn deliver_stripe_event(&self, event: &Value) -> u16 {
        self.stripe.deliver(event).await.unwrap()
    }

    /// The event Stripe would send about this request's refund.
    pub async fn refund_event(&self, id: RequestId, kind: &str, status: &str) -> Value {
        let refund = self.request(id).await.refund.expect("the refund was made").id;
        self.stripe.refund_event(refund.as_str(), kind, status, None).expect("the stand-in knows the refund")
    }

    pub fn thread_texts(&self, card: &Posted) -> Vec<String> {
        self.slack.thread(&card.ts).into_iter().map(|m| m.text).collect()
    }

    /// Texts that replaced a slash command's private answer (through its `response_url`).
    pub fn replaced_answers(&self) -> Vec<String> {
        self.slack
            .responses()
            .into_iter()
            .filter(|(_, body)| body["replace_original"] == true)
            .map(|(_, body)| body["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn direct_messages(&self, user: &str) -> Vec<String> {
        self.slack.messages_in(user).into_iter().map(|m| m.text).collect()
    }
}

/// The real binary, with the environment a desk needs to reach these Slack and Stripe stand-ins.
pub fn desk_command(slack_url: &str, stripe_url: &str, data_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_refund-desk"));
    cmd.env_clear()
        .env("REFUND_DESK_DATA_DIR", data_dir)
        .env("SLACK_SIGNING_SECRET", driver::SIGNING_SECRET)
        .env("SLACK_BOT_TOKEN", driver::BOT_TOKEN)
        .env("SLACK_API_URL", slack_url)
        .env("SLACK_FINANCE_CHANNEL", driver::FINANCE_CHANNEL)
        .env("SLACK_APPROVERS", APPROVER)
        .env("STRIPE_SECRET_KEY", driver::STRIPE_KEY)
        .env("STRIPE_WEBHOOK_SECRET", driver::WEBHOOK_SECRET)
        .env("STRIPE_API_URL", stripe_url);
    cmd
}

/// A free loopback port for a desk process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `/readyz` on `port` until it answers 200, or fails the test at `deadline`.
pub async fn wait_until_ready(port: u16, deadline: Duration) {
    let http = reqwest::Client::new();
    let until = std::time::Instant::now() + deadline;
    loop {
        let ready = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(std::time::Instant::now() < until, "the desk never became ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends SIGTERM to `child` and returns its exit code, failing the test if it is still running
/// at `deadline`.
pub async fn terminate(child: &mut std::process::Child, deadline: Duration) -> Option<i32> {
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    wait_for_exit(child, deadline).await
}

/// Waits for `child` to exit and returns its exit code, failing the test at `deadline`.
pub async fn wait_for_exit(child: &mut std::process::Child, deadline: Duration) -> Option<i32> {
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(std::time::Instant::now() < until, "still running {deadline:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A desk process (or strace running one) that is killed with its children when the test ends,
/// however it ends, so a failed test leaves no desk running behind it.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for child in children_of(self.0.id()) {
            let _ = std::process::Command::new("kill").args(["-KILL", &child.to_string()]).status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Held by the tests that load the machine (many clients against a desk process) and by those
/// whose outcome a starved machine could bend (Stripe's pace), so they never run at once on a
/// 2-core machine.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The ids of a process's children (strace's: the desk it runs).
pub fn children_of(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().filter_map(|c| c.parse().ok()).collect()
}

/// The request id in the desk's answer to `/refund` (`Got it: *R-1001*, ...`).
pub fn request_id_in(answer: &str) -> RequestId {
    answer
        .split(|c: char| c == '*' || c.is_whitespace())
        .find_map(|w| RequestId::parse(w).ok())
        .unwrap_or_else(|| panic!("no request id in {answer:?}"))
}

/// Waits for request `id`'s card in the finance channel.
pub async fn card_in(slack: &refund_desk_standins::FakeSlack, id: RequestId) -> Posted {
    let marker = format!("Refund request {id}");
    wait_for(DEADLINE, || slack.messages_in(FINANCE).into_iter().find(|m| m.text.starts_with(&marker)))
        .await
        .unwrap_or_else(|| panic!("no card for {id}"))
}
