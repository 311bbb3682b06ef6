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
    /// List or retry the jobs that ran out of attempts (on sled with the service stopped; on
    /// PostgreSQL at any time).
    Jobs {
        #[command(subcommand)]
        action: JobsCmd,
    },
    /// Check or export the audit trail (on sled with the service stopped; on PostgreSQL at any
    /// time).
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
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

async fn run_audit_command(action: AuditCmd) -> anyhow::Result<ExitCode> {
    let store = refund_desk::admin::open_from_env().await?;
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
    let store = refund_desk::admin::open_from_env().await?;
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
        Cmd::Jobs { action } => match runtime.block_on(run_jobs_command(action)) {
            Ok(text) => {
                println!("{}", text.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("refund-desk: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Check => {
            let settings = match Settings::load() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("refund-desk: configuration error: {e}");
                    return ExitCode::from(2);
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
        Cmd::Migrate { from_data_dir, to } => {
            match runtime.block_on(refund_desk::admin::migrate(&from_data_dir, &to)) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("refund-desk: {e:#}");
                    ExitCode::FAILURE
                }
            }
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
