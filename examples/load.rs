//! The load benchmark: the real service in a process of its own, against the Slack and Stripe
//! stand-ins, with N concurrent clients sending signed `/refund`s for a set time.
//!
//! ```sh
//! cargo run --release --example load                        # 64 clients, 10 s, Stripe's pace lifted
//! cargo run --release --example load -- --clients 16 --secs 10
//! cargo run --release --example load -- --paced --burst 1000 # Stripe's test-mode pace: budget used
//! cargo run --release --example load -- --answers             # the answers alone, at Stripe's pace
//! ```
//!
//! It prints answers per second, p50 and p99 of the answer, cards per second end to end (request
//! to card in the finance channel), how long the backlog took to drain, the desk's CPU per answer
//! and its peak RSS. With `--paced`, it sends a burst of requests and reports how much of the
//! Stripe budget (`STRIPE_RATE_LIMIT`, 20 calls/s for a test key) the checks used, and how many
//! calls Stripe refused with 429. With `--answers`, the desk keeps Stripe's pace (as a real one
//! does) and only the answers to Slack are measured: the backlog, which drains at Stripe's pace,
//! is not waited for.

use refund_desk_standins::driver;
use refund_desk_standins::load::{LoadPlan, LoadReport, run_load};
use refund_desk_standins::{FakeSlack, FakeStripe};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DESK_MODE: &str = "--run-desk";
/// `STRIPE_RATE_LIMIT` for `--paced`: the desk's default for a test key.
const PACED_RATE: u32 = 20;
/// `STRIPE_RATE_LIMIT` otherwise: no pace at all, to measure the desk's own capacity.
const LIFTED_RATE: u32 = 100_000;

#[derive(Debug)]
struct Args {
    clients: usize,
    secs: u64,
    paced: bool,
    answers_only: bool,
    burst: usize,
}

fn parse_args() -> Args {
    let mut args = Args { clients: 64, secs: 10, paced: false, answers_only: false, burst: 1000 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok()).expect("a number after the flag");
        match arg.as_str() {
            "--clients" => args.clients = value() as usize,
            "--secs" => args.secs = value(),
            "--burst" => args.burst = value() as usize,
            "--paced" => args.paced = true,
            "--answers" => {
                args.paced = true;
                args.answers_only = true;
            }
            other => panic!("unknown argument {other}; see the top of examples/load.rs"),
        }
    }
    args
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(DESK_MODE) {
        return run_desk();
    }
    let args = parse_args();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(bench(args));
}

/// The child process: exactly what `refund-desk serve` runs, configured from the environment.
fn run_desk() {
    refund_desk::app::install_crypto_provider();
    // Logging as `serve` sets it up, so its cost is in the figures too.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let settings = refund_desk::config::Settings::load().expect("the benchmark's settings");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let app = refund_desk::app::Application::build(settings).await.expect("the desk starts");
        app.run_until_stopped().await.expect("the desk stops cleanly");
    });
}

/// `(user + system CPU seconds, peak RSS in KiB)` of a process, from /proc.
fn usage_of(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Linux reports CPU time in clock ticks of 1/100 s.
    (ticks / 100.0, hwm)
}

fn start_desk(slack: &FakeSlack, stripe: &FakeStripe, dir: &std::path::Path, port: u16, paced: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg(DESK_MODE)
        .env_clear()
        .env("REFUND_DESK_LISTEN", format!("127.0.0.1:{port}"))
        .env("REFUND_DESK_DATA_DIR", dir)
        .env("SLACK_SIGNING_SECRET", driver::SIGNING_SECRET)
        .env("SLACK_BOT_TOKEN", driver::BOT_TOKEN)
        .env("SLACK_API_URL", &slack.url)
        .env("SLACK_FINANCE_CHANNEL", driver::FINANCE_CHANNEL)
        .env("SLACK_APPROVERS", "U0APPROVE1")
        .env("STRIPE_SECRET_KEY", driver::STRIPE_KEY)
        .env("STRIPE_WEBHOOK_SECRET", driver::WEBHOOK_SECRET)
        .env("STRIPE_API_URL", &stripe.url)
        .env("RUST_LOG", "error")
        // The desk's own tuning, passed through to compare settings.
        .envs(
            ["REFUND_DESK_CACHE_MB", "REFUND_DESK_JOB_CONCURRENCY"]
                .iter()
                .filter_map(|name| Some((*name, std::env::var(name).ok()?))),
        )
        .stdout(Stdio::null());
    cmd.env("STRIPE_RATE_LIMIT", (if paced { PACED_RATE } else { LIFTED_RATE }).to_string());
    cmd.spawn().expect("the desk process starts")
}

async fn wait_ready(port: u16) {
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the desk never became ready");
}

/// Waits until every accepted request has its card; returns when the last one came.
async fn drained(slack: &FakeSlack, report: &LoadReport, limit: Duration) -> Option<Instant> {
    let until = Instant::now() + limit;
    loop {
        let cards: Vec<Option<Instant>> =
            report.accepted.iter().map(|a| slack.messages_with_button(&a.id).first().map(|c| c.posted_at)).collect();
        if cards.iter().all(Option::is_some) {
            return cards.into_iter().flatten().max();
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bench(args: Args) {
    let slack = FakeSlack::start(driver::BOT_TOKEN).await.expect("Slack stand-in");
    let stripe = FakeStripe::start(driver::STRIPE_KEY).await.expect("Stripe stand-in");
    if !args.paced {
        stripe.set_rate_limit(None);
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
    let mut desk = start_desk(&slack, &stripe, dir.path(), port, args.paced);
    wait_ready(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("machine: {cores} cores; desk pid {}; data in {}", desk.id(), dir.path().display());

    let duration =
        if args.paced && !args.answers_only { Duration::from_secs(3600) } else { Duration::from_secs(args.secs) };
    let plan = LoadPlan {
        clients: args.clients,
        duration,
        requester: "U0REQUEST1".into(),
        approver: None,
        answer_timeout: Duration::from_secs(3),
    };
    let (cpu_before, _) = usage_of(desk.id());
    let report = if args.paced && !args.answers_only {
        run_burst(&base, &slack, &stripe, &plan, args.burst).await
    } else {
        run_load(&base, &slack, &stripe, &plan).await
    };
    let load_end = Instant::now();
    let (cpu_after_load, _) = usage_of(desk.id());
    let answered = report.accepted.len();
    println!(
        "{} clients for {:.1} s: {answered} /refund answered ({} failed), {:.0} answers/s; p50 {:.2} ms, p99 {:.2} ms",
        args.clients,
        report.elapsed.as_secs_f64(),
        report.failure_count,
        answered as f64 / report.elapsed.as_secs_f64(),
        ms(report.percentile(0.50)),
        ms(report.percentile(0.99)),
    );
    for failure in report.failures.iter().take(3) {
        println!("  failure: {failure}");
    }
    if args.answers_only {
        let (cpu_end, peak_kib) = usage_of(desk.id());
        println!(
            "desk CPU: {:.2} ms per answer; peak RSS {:.1} MiB",
            1000.0 * (cpu_end - cpu_before) / answered.max(1) as f64,
            peak_kib as f64 / 1024.0
        );
        // The backlog drains at Stripe's pace; it is not what this run measures.
        let _ = desk.kill();
        let _ = desk.wait();
        return;
    }
    let first_answer = report.accepted.iter().map(|a| a.answered_at - a.latency).min().unwrap_or(load_end);
    let carded_during_load = report
        .accepted
        .iter()
        .filter(|a| slack.messages_with_button(&a.id).first().is_some_and(|c| c.posted_at <= load_end))
        .count();
    println!(
        "cards posted during the load: {carded_during_load} ({:.0}/s); backlog at the end: {}",
        carded_during_load as f64 / report.elapsed.as_secs_f64(),
        answered - carded_during_load
    );
    let limit = if args.paced { Duration::from_secs(600) } else { Duration::from_secs(120) };
    match drained(&slack, &report, limit).await {
        Some(last) => {
            let drain = last.saturating_duration_since(load_end);
            let mut to_card: Vec<Duration> = report
                .accepted
                .iter()
                .filter_map(|a| {
                    slack.messages_with_button(&a.id).first().map(|c| c.posted_at - (a.answered_at - a.latency))
                })
                .collect();
            to_card.sort();
            let pick = |p: f64| {
                to_card.get(((to_card.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
            };
            println!(
                "every card posted {:.2} s after the load ended ({:.0} cards/s end to end); request to card p50 {:.0} ms, p99 {:.0} ms",
                drain.as_secs_f64(),
                answered as f64 / (last - first_answer).as_secs_f64(),
                ms(pick(0.5)),
                ms(pick(0.99)),
            );
            if args.paced {
                // What Stripe answered; calls it refused with 429 spent no budget.
                let calls = stripe.received().len() - stripe.rate_limited() as usize;
                let span = (last - first_answer).as_secs_f64();
                let budget = f64::from(PACED_RATE);
                println!(
                    "Stripe: {calls} calls in {span:.1} s = {:.1} calls/s of a budget of {budget}/s ({:.0}%); {} refused with 429",
                    calls as f64 / span,
                    100.0 * calls as f64 / span / budget,
                    stripe.rate_limited()
                );
            }
        }
        None => println!("the backlog did not drain within {} s", limit.as_secs()),
    }
    let (cpu_end, peak_kib) = usage_of(desk.id());
    println!(
        "desk CPU: {:.2} ms per answer during the load, {:.2} ms per request in all; peak RSS {:.1} MiB",
        1000.0 * (cpu_after_load - cpu_before) / answered.max(1) as f64,
        1000.0 * (cpu_end - cpu_before) / answered.max(1) as f64,
        peak_kib as f64 / 1024.0
    );
    let _ = Command::new("kill").args(["-TERM", &desk.id().to_string()]).status();
    let status = desk.wait().expect("the desk exits");
    println!("desk stopped with {status}");
}

/// Sends `count` requests as fast as the clients can, then stops.
async fn run_burst(base: &str, slack: &FakeSlack, stripe: &FakeStripe, plan: &LoadPlan, count: usize) -> LoadReport {
    // The clients run until stopped; the burst is over once `count` were answered.
    let stop_after = Duration::from_secs(1);
    let mut plan = plan.clone();
    plan.duration = stop_after;
    let mut report = LoadReport::default();
    while report.accepted.len() < count {
        let part = run_load(base, slack, stripe, &plan).await;
        report.accepted.extend(part.accepted);
        report.failure_count += part.failure_count;
        report.failures.extend(part.failures);
        report.elapsed += part.elapsed;
    }
    report
}
