//! `refund-desk demo`: the whole happy path offline, in one process. The real service runs
//! against local stand-ins for Slack, Stripe and SMTP on loopback; a scripted `/refund`, an
//! approval and Stripe's webhooks go through it, and the transcript shows what each person sees.

use crate::app::Application;
use crate::config::{JobSettings, Settings, Sources};
use crate::domain::{RequestId, RequestStatus};
use anyhow::{Context, anyhow};
use refund_desk_standins::driver::{self, SlackDriver};
use refund_desk_standins::render::{blocks_to_text, humanize};
use refund_desk_standins::{ChargeSpec, FakeSlack, FakeStripe, SmtpSink, wait_for, wait_for_async};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Settings for a desk on port 0 that talks to the given stand-ins.
pub fn desk_settings(
    slack_url: &str,
    stripe_url: &str,
    smtp_url: Option<&str>,
    data_dir: &Path,
    approvers: &str,
    jobs: JobSettings,
) -> Settings {
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("REFUND_DESK_LISTEN", "127.0.0.1:0".to_string()),
        ("REFUND_DESK_DATA_DIR", data_dir.display().to_string()),
        ("SLACK_SIGNING_SECRET", driver::SIGNING_SECRET.to_string()),
        ("SLACK_BOT_TOKEN", driver::BOT_TOKEN.to_string()),
        ("SLACK_API_URL", slack_url.to_string()),
        ("SLACK_FINANCE_CHANNEL", driver::FINANCE_CHANNEL.to_string()),
        ("SLACK_APPROVERS", approvers.to_string()),
        ("STRIPE_SECRET_KEY", driver::STRIPE_KEY.to_string()),
        ("STRIPE_WEBHOOK_SECRET", driver::WEBHOOK_SECRET.to_string()),
        ("STRIPE_API_URL", stripe_url.to_string()),
    ]);
    if let Some(url) = smtp_url {
        vars.insert("SMTP_URL", url.to_string());
        vars.insert("EMAIL_FROM", driver::EMAIL_FROM.to_string());
    }
    let sources = Sources::from_lookup(|name| vars.get(name).cloned()).expect("no config file is named");
    let mut settings = Settings::from_sources(&sources).expect("the stand-in settings are complete");
    settings.jobs = jobs;
    settings
}

const AGENT: &str = "U0SAMAGENT";
const APPROVER: &str = "U0FATIMAFN";
const NAMES: [(&str, &str); 2] = [(AGENT, "sam (support)"), (APPROVER, "fatima (finance)")];
const DEADLINE: Duration = Duration::from_secs(30);

fn say(text: &str) {
    println!("{}", humanize(text, &NAMES));
}

fn section(title: &str) {
    println!("\n--- {title} {}", "-".repeat(60usize.saturating_sub(title.len())));
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// The app-level token the demo's Socket Mode uses.
const APP_TOKEN: &str = "xapp-1-A00000001-1700000000-demo";

/// How Slack and Stripe reach the desk in the demo.
enum Transport {
    /// Signed HTTP requests and webhooks, as with a public address.
    Http(SlackDriver),
    /// Socket Mode for Slack, and Stripe's events read from its API: no public address.
    Outbound(refund_desk_standins::socket::SocketModeStandIn),
}

impl Transport {
    /// `/refund <text>` as `user`: the private answer's text.
    async fn slash(&self, user: &str, text: &str) -> anyhow::Result<String> {
        let answer = match self {
            Transport::Http(driver) => {
                let (status, answer) = driver.slash(user, text).await;
                anyhow::ensure!(status == 200, "/refund answered HTTP {status}");
                answer
            }
            Transport::Outbound(socket) => {
                let id = socket
                    .send("slash_commands", SlackDriver::command_payload(user, text), 0)
                    .context("no Socket Mode connection")?;
                socket.ack(&id, Duration::from_secs(3)).await.context("the envelope was not acknowledged in 3 s")?
            }
        };
        Ok(answer["text"].as_str().unwrap_or_default().to_string())
    }

    async fn click(&self, user: &str, action: &str, id: &str, card_ts: &str) -> anyhow::Result<()> {
        match self {
            Transport::Http(driver) => {
                let status = driver.click(user, action, id, card_ts).await;
                anyhow::ensure!(status == 200, "the click answered HTTP {status}");
            }
            Transport::Outbound(socket) => {
                let envelope = socket
                    .send("interactive", SlackDriver::click_payload(user, action, id, card_ts), 0)
                    .context("no Socket Mode connection")?;
                socket.ack(&envelope, Duration::from_secs(3)).await.context("the click was not acknowledged in 3 s")?;
            }
        }
        Ok(())
    }
}

pub async fn run(socket_mode: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "refund-desk-demo-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    let result = run_in(&dir, socket_mode).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &std::path::Path, socket_mode: bool) -> anyhow::Result<()> {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await?;
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await?;
    let smtp = SmtpSink::start().await?;
    let jobs = JobSettings { first_retry: Duration::from_millis(100), ..JobSettings::default() };
    let mut settings = desk_settings(&slack.url, &stripe.url, Some(&smtp.url()), dir, APPROVER, jobs);
    let socket = if socket_mode {
        settings.slack.app_token = Some(secrecy::SecretString::from(APP_TOKEN.to_string()));
        settings.slack.signing_secret = None;
        settings.stripe.webhook_secrets.clear();
        settings.stripe.events_every = Duration::from_millis(500);
        Some(slack.enable_socket_mode(APP_TOKEN).await?)
    } else {
        None
    };
    let app = Application::build(settings).await?;
    let base = format!("http://{}", app.local_addr());
    let slack_side = match socket {
        Some(socket) => {
            anyhow::ensure!(
                socket.wait_until(DEADLINE, |s| s.connections_open() > 0).await,
                "the desk never opened a Socket Mode connection"
            );
            Transport::Outbound(socket)
        }
        None => {
            stripe.send_webhooks_to(&format!("{base}/stripe/webhook"), driver::WEBHOOK_SECRET);
            Transport::Http(SlackDriver::new(base.clone()).with_response_urls(slack.response_url_base()))
        }
    };
    let store = app.context().store.clone();

    let (charge, _) = stripe.add_charge(ChargeSpec { amount: 4999, created_days_ago: 3, ..ChargeSpec::default() });
    println!(
        "refund-desk demo: the real service at {base}, with stand-ins for Slack ({}), Stripe ({}) and SMTP ({}).",
        slack.url,
        stripe.url,
        smtp.url()
    );
    println!("Stripe holds charge {charge}: $49.99, paid 3 days ago by jenny.rosen@example.com (Visa 4242).");

    section("In #support, sam types");
    let text = format!("{charge} 25.00 duplicate customer charged twice");
    say(&format!("/refund {text}"));
    let answer = slack_side.slash(AGENT, &text).await?;
    say(&format!("refund-desk, privately to sam:\n{}", indent(&answer)));
    let id = answer
        .split(|c: char| c == '*' || c.is_whitespace())
        .find_map(|w| RequestId::parse(w).ok())
        .ok_or_else(|| anyhow!("the answer names no request"))?;

    section("In #finance, the approval card");
    let card = wait_for(DEADLINE, || slack.messages_in(driver::FINANCE_CHANNEL).pop())
        .await
        .ok_or_else(|| anyhow!("the card was never posted"))?;
    say(&indent(&blocks_to_text(&card.blocks)));

    section("fatima clicks Approve, then confirms");
    slack_side.click(APPROVER, "refund_approve", &id.to_string(), &card.ts).await?;
    let request = wait_for_async(DEADLINE, || async {
        store.get_request(id).await.ok().flatten().filter(|r| r.status == RequestStatus::Submitted)
    })
    .await
    .ok_or_else(|| anyhow!("the refund was never submitted to Stripe"))?;
    let post = stripe.refund_posts().pop().context("no refund call reached Stripe")?;
    let form: Vec<String> = post.form.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("Stripe received: POST /v1/refunds {}", form.join(" "));
    println!("                 Idempotency-Key: {}", post.idempotency_key.unwrap_or_default());

    let refund = request.refund.context("no refund recorded")?.id;
    if socket_mode {
        section("Stripe confirms; refund-desk reads Stripe's events itself");
    } else {
        section("Stripe confirms through webhooks");
    }
    for (kind, status) in [("refund.created", "pending"), ("refund.updated", "succeeded")] {
        let event = stripe.refund_event(refund.as_str(), kind, status, None).context("the stand-in lost the refund")?;
        if socket_mode {
            println!("{kind} ({status}) → listed at GET /v1/events");
        } else {
            let code = stripe.deliver(&event).await.map_err(|e| anyhow!(e))?;
            println!("{kind} ({status}) → refund-desk answered {code}");
        }
    }
    wait_for(DEADLINE, || (!smtp.messages().is_empty()).then_some(()))
        .await
        .ok_or_else(|| anyhow!("no email reached the SMTP server"))?;
    let later = || chrono::Utc::now() + chrono::Duration::seconds(60);
    wait_for_async(DEADLINE, || async {
        store.all_jobs().await.ok().filter(|j| j.iter().all(|j| j.not_before > later())).map(|_| ())
    })
    .await
    .ok_or_else(|| anyhow!("side effects never finished"))?;

    section("In #finance, the card now reads");
    let edited = slack.message(&card.ts).context("the card vanished")?;
    say(&indent(&blocks_to_text(&edited.blocks)));
    section("and its thread");
    for reply in slack.thread(&card.ts) {
        say(&format!("    • {}", reply.text));
    }

    section("sam's direct messages from refund-desk");
    for dm in slack.messages_in(AGENT) {
        say(&format!("    • {}", dm.text));
    }

    section("The email jenny received");
    for email in smtp.messages() {
        for header in ["From", "To", "Subject"] {
            println!("    {header}: {}", email.header(header).unwrap_or_default());
        }
        println!("{}", indent(email.body().trim_end()));
    }
    println!("\nDone: one approval, one Stripe refund ({refund}), one email.");
    app.stop().await?;
    Ok(())
}
