//! The `refund-desk` command line: parse the arguments and hand over to the library.

use clap::{Parser, Subcommand};
use refund_desk::app::{Application, install_crypto_provider};
use refund_desk::config::Settings;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "refund-desk", version, about = "Refund Stripe payments from Slack while finance keeps control")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service (the default).
    Serve,
    /// Run the whole flow offline, against local stand-ins, and print what people would see.
    Demo {
        /// Slack over Socket Mode and Stripe's events read from its API: no public address.
        #[arg(long)]
        socket_mode: bool,
    },
    /// Validate the configuration and reach Slack, Stripe and the mail server.
    Check,
    /// Exit 0 if the service on REFUND_DESK_LISTEN answers /healthz (a container's HEALTHCHECK).
    Healthcheck,
    /// List or retry the jobs that ran out of attempts (also while the service runs).
    Jobs {
        #[command(subcommand)]
        action: JobsCmd,
    },
    /// Check or export the audit trail (also while the service runs).
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Take a consistent backup of the embedded store now (through the running service when one
    /// holds it), with its manifest beside it.
    Backup {
        #[arg(long, value_name = "FILE")]
        to: std::path::PathBuf,
    },
    /// Restore a backup into an empty data directory (service stopped): checks its SHA-256,
    /// verifies the audit chain, and says what it restored.
    Restore {
        #[arg(long, value_name = "FILE")]
        from: std::path::PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: std::path::PathBuf,
    },
    /// Copy the embedded store (a data directory, service stopped) into an empty PostgreSQL
    /// database, then check the copy.
    Migrate {
        /// The data directory the desk ran on (REFUND_DESK_DATA_DIR).
        #[arg(long, value_name = "DIR")]
        from_data_dir: std::path::PathBuf,
        /// The database to copy into: postgres://... (as DATABASE_URL).
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Print the Slack app manifest: for Socket Mode (no public address), or for a public URL.
    Manifest {
        /// Where Slack reaches this desk over HTTPS, e.g. https://refunds.acme.com
        #[arg(long, required_unless_present = "socket_mode", conflicts_with = "socket_mode")]
        url: Option<String>,
        /// Slack's traffic over Socket Mode: no request URLs.
        #[arg(long)]
        socket_mode: bool,
    },
}

#[derive(Subcommand)]
enum JobsCmd {
    /// The parked jobs; with --all, every job still waiting.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Put a parked job back in the queue, with fresh attempts.
    Retry {
        /// The job's number, from `jobs list`.
        id: u64,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check that no entry was edited, removed or inserted; exits 1 if one was.
    Verify,
    /// Print the entries, oldest first.
    Export {
        /// Only entries on or after this date (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
        #[arg(long, value_enum, default_value = "csv")]
        format: refund_desk::admin::ExportFormat,
    },
}

/// The running desk's answer to `method path`, or its error text as an error.
async fn through_running_desk(dir: &std::path::Path, method: &str, path: &str) -> anyhow::Result<String> {
    let answer = refund_desk::control::call(dir, method, path).await?;
    if answer.ok { Ok(answer.text) } else { anyhow::bail!("{}", answer.text.trim_end()) }
}

async fn run_audit_command(action: AuditCmd) -> anyhow::Result<ExitCode> {
    use refund_desk::admin::Target;
    let store = match refund_desk::admin::target_from_env().await? {
        Target::Store(store) => store,
        Target::Running(dir) => {
            return match action {
                AuditCmd::Verify => {
                    let answer = refund_desk::control::call(&dir, "GET", "/audit/verify").await?;
                    println!("{}", answer.text.trim_end());
                    Ok(if answer.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
                }
                AuditCmd::Export { since, format } => {
                    let since = since.map(|d| format!("&since={d}")).unwrap_or_default();
                    let json = format == refund_desk::admin::ExportFormat::Json;
                    print!(
                        "{}",
                        through_running_desk(&dir, "GET", &format!("/audit/export?json={json}{since}")).await?
                    );
                    Ok(ExitCode::SUCCESS)
                }
            };
        }
    };
    match action {
        AuditCmd::Verify => {
            let (intact, text) = refund_desk::admin::audit_verify(&store).await?;
            println!("{text}");
            Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuditCmd::Export { since, format } => {
            refund_desk::admin::audit_export(&store, since, format, std::io::stdout().lock()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_jobs_command(action: JobsCmd) -> anyhow::Result<String> {
    use refund_desk::admin::Target;
    let store = match refund_desk::admin::target_from_env().await? {
        Target::Store(store) => store,
        Target::Running(dir) => {
            return match action {
                JobsCmd::List { all } => through_running_desk(&dir, "GET", &format!("/jobs?all={all}")).await,
                JobsCmd::Retry { id } => through_running_desk(&dir, "POST", &format!("/jobs/{id}/retry")).await,
            };
        }
    };
    match action {
        JobsCmd::List { all } => refund_desk::admin::jobs_list(&store, all).await,
        JobsCmd::Retry { id } => refund_desk::admin::jobs_retry(&store, id).await,
    }
}

/// Logs to stderr, as text (coloured only on a terminal) or JSON lines (`REFUND_DESK_LOG_FORMAT`).
fn init_tracing(default: &str) -> Result<(), refund_desk::config::ConfigError> {
    use std::io::IsTerminal;
    let format = refund_desk::config::log_format_from_env()?;
    // slack-morphism's Socket Mode logs its connection URL, whose ticket is a credential.
    // The database driver's notices and the migration runner's chatter stay out unless asked for.
    let default =
        format!("{default},slack_morphism::hyper_tokio::socket_mode=off,tokio_postgres=warn,refinery_core=warn");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        refund_desk::config::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        refund_desk::config::LogFormat::Json => {
            logs.json().flatten_event(true).with_current_span(true).with_span_list(true).init()
        }
    }
    Ok(())
}

/// `backup --to FILE`: on the store, or through the running desk that holds it.
async fn run_backup_command(to: std::path::PathBuf) -> anyhow::Result<String> {
    use refund_desk::admin::Target;
    // The running desk writes the file itself: give it a full path.
    let to = match to.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::canonicalize(parent)?.join(to.file_name().unwrap_or_default()),
        None => std::env::current_dir()?.join(&to),
    };
    match refund_desk::admin::target_from_env().await? {
        Target::Store(store) => Ok(refund_desk::admin::backup_summary(&to, &store.backup_to(&to).await?)),
        Target::Running(dir) => {
            let query: String =
                url::form_urlencoded::Serializer::new(String::new()).append_pair("to", &to.to_string_lossy()).finish();
            through_running_desk(&dir, "POST", &format!("/backup?{query}")).await
        }
    }
}

/// `healthcheck`: asks the service on `REFUND_DESK_LISTEN` (on this machine) for `/healthz`.
async fn healthcheck() -> anyhow::Result<String> {
    let mut addr = refund_desk::config::listen_from_env()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(4)).build()?;
    let status = client.get(&url).send().await?.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(format!("{url}: {status}"))
}

/// Prints `result`'s text, or its error; the exit code says which.
fn report(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refund-desk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The manifest the command line asked for.
fn manifest(url: Option<&str>, socket_mode: bool) -> Result<String, String> {
    match url {
        _ if socket_mode => Ok(refund_desk::manifest::for_socket_mode()),
        Some(url) => refund_desk::manifest::for_url(url),
        None => Err("give --url or --socket-mode".to_string()),
    }
}

fn main() -> ExitCode {
    // Before any TLS client exists: reqwest, slack-morphism and lettre share this provider.
    install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("refund-desk: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => {
            if let Err(e) = init_tracing("info,refund_desk=info") {
                eprintln!("refund-desk: configuration error: {e}");
                return ExitCode::from(2);
            }
            let settings = match Settings::load() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("refund-desk: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = runtime.block_on(async {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("refund-desk: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "demo")]
        Cmd::Demo { socket_mode } => {
            if let Err(e) = init_tracing("warn") {
                eprintln!("refund-desk: configuration error: {e}");
                return ExitCode::from(2);
            }
            match runtime.block_on(refund_desk::demo::run(socket_mode)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("refund-desk demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(not(feature = "demo"))]
        Cmd::Demo { .. } => {
            eprintln!("refund-desk: this build has no demo (built without the `demo` feature)");
            ExitCode::from(2)
        }
        Cmd::Jobs { action } => report(runtime.block_on(run_jobs_command(action))),
        Cmd::Check => {
            // Every problem with the settings at once, before anything is reached.
            let problems = match refund_desk::config::Sources::from_env() {
                Ok(sources) => Settings::problems(&sources),
                Err(e) => vec![e],
            };
            if !problems.is_empty() {
                for problem in problems {
                    println!("config: FAILED: {problem}");
                }
                return ExitCode::FAILURE;
            }
            let settings = match Settings::load() {
                Ok(s) => s,
                Err(e) => {
                    println!("config: FAILED: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (ok, lines) = runtime.block_on(refund_desk::admin::check(&settings));
            for line in lines {
                println!("{line}");
            }
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Cmd::Audit { action } => runtime.block_on(run_audit_command(action)).unwrap_or_else(|e| {
            eprintln!("refund-desk: {e:#}");
            ExitCode::FAILURE
        }),
        Cmd::Backup { to } => report(runtime.block_on(run_backup_command(to))),
        Cmd::Healthcheck => report(runtime.block_on(healthcheck())),
        Cmd::Restore { from, data_dir } => report(runtime.block_on(refund_desk::admin::restore(&from, &data_dir))),
        Cmd::Migrate { from_data_dir, to } => {
            report(runtime.block_on(refund_desk::admin::migrate(&from_data_dir, &to)))
        }
        Cmd::Manifest { url, socket_mode } => match manifest(url.as_deref(), socket_mode) {
            Ok(m) => {
                println!("{m}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("refund-desk: {e}");
                ExitCode::from(2)
            }
        },
    }
}
