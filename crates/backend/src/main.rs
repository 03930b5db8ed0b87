//! `logferry`: the backend binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use logferry_backend::auth::TokenAuthority;
use logferry_backend::send::{self, SendArgs};
use logferry_backend::serve::{self, ServeArgs};
use logferry_backend::tenants::TenantStore;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "logferry",
    version,
    about = "Carries Fluent Bit's logs exactly once."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LOGFERRY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest, buffer and route in one process (embedded defaults).
    Serve(ServeArgs),
    /// Tokens for agents.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ship lines from a file or stdin, without Fluent Bit.
    Send(SendArgs),
    /// Stateless ingest into Kafka (not in this build yet).
    Ingest,
    /// Route from Kafka to destinations (not in this build yet).
    Route,
    /// Verify the hash chains of files the file sink wrote (not in this build yet).
    Verify { paths: Vec<PathBuf> },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token for an access key and print it.
    Issue {
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Tenant registry; default: `<data-dir>/tenants.yaml`.
        #[arg(long, env = "LOGFERRY_TENANTS")]
        tenants: Option<PathBuf>,
        #[arg(long)]
        access_key: String,
        /// Lifetime, like `30d` or `12h`.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn not_in_this_build(what: &str) -> Result<()> {
    bail!(
        "{what} is not implemented in this build yet; `logferry serve` runs ingest, buffer and router in one process"
    )
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve::run(args)),
        Command::Send(args) => send::run(args),
        Command::Token(TokenCommand::Issue {
            data_dir,
            tenants,
            access_key,
            ttl,
        }) => {
            let tenants = tenants.unwrap_or_else(|| data_dir.join("tenants.yaml"));
            let registry = logferry_backend::tenants::Registry::load(&tenants)?;
            let principal = registry.lookup(&access_key).with_context(|| {
                format!(
                    "access key `{access_key}` is not in `{}`",
                    tenants.display()
                )
            })?;
            let authority = TokenAuthority::load_or_create(&data_dir.join("keys"))?;
            let (token, claims) = authority.issue(&principal.tenant, &access_key, ttl)?;
            eprintln!(
                "token for access key `{access_key}` of tenant `{}`, jti {}, expires in {}",
                principal.tenant,
                claims.jti,
                humantime::format_duration(ttl)
            );
            println!("{token}");
            Ok(())
        }
        Command::Ingest => not_in_this_build("`logferry ingest` (Kafka buffer)"),
        Command::Route => not_in_this_build("`logferry route` (Kafka buffer)"),
        Command::Verify { .. } => not_in_this_build("`logferry verify` (hash-chained files)"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logferry: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
