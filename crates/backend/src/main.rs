//! `logferry`: the backend binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use logferry_backend::auth::{Revocations, TokenAuthority, decode_unverified, revoke};
use logferry_backend::ingest::Authenticator;
use logferry_backend::kafka::KafkaArgs;
use logferry_backend::keys::{KeyRing, keys_dir};
use logferry_backend::live::Live;
use logferry_backend::send::{self, SendArgs};
use logferry_backend::serve::{self, ServeArgs};
use logferry_backend::signing::{
    CHECKPOINT_KEY, CheckpointVerifier, KeyRole, TOKEN_KEY, public_path,
};
use logferry_backend::tenants::Registry;
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
    /// File mode creation mask (octal) for everything logferry writes: sink files,
    /// buffer, marks, checkpoints, dead letters, `logferry send`'s spool. The default
    /// `077` keeps them to the owner (files 0600, directories 0700). For readers in
    /// a group, use `027` and give the data directory that group with its setgid bit
    /// (`chgrp logs DIR && chmod g+s DIR`), so new files take the group.
    #[arg(long, global = true, default_value = "077", env = "LOGFERRY_UMASK", value_parser = parse_umask)]
    umask: u32,
    #[command(subcommand)]
    command: Command,
}

/// `--umask`: three or four octal digits, at most `0777`.
fn parse_umask(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|mask| *mask <= 0o777 && (3..=4).contains(&value.len()))
        .ok_or_else(|| format!("`{value}` is not an octal mask like 077 or 027"))
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
    /// Tokens for agents: issue, revoke, inspect.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tenants' payload encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// What the router could not deliver, and why.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Ship lines from a file or stdin, without Fluent Bit.
    Send(SendArgs),
    /// Stateless ingest into Kafka: authenticate agents, produce their batches, ack.
    Ingest(KafkaRoleArgs),
    /// Route from Kafka to the registry's destinations, exactly once per partition.
    Route(RouteArgs),
    /// Kafka administration.
    #[command(subcommand)]
    Kafka(KafkaCommand),
    /// Check files the file sink wrote against their hash chains, signed checkpoints
    /// and signed manifests. Exits 1 on any finding.
    Verify {
        /// The backend's data directory. Without `--public-key`, verify trusts the
        /// public keys it finds in `<data-dir>/keys` (and says so): whoever can write
        /// that directory can replace them and re-sign, so pin a copy kept elsewhere.
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Pins the checkpoint key (PEM, from `logferry keys export-verify`): only it
        /// verifies checkpoints and manifests. Default: `<data-dir>/keys/checkpoint.pub.pem`.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// With `--public-key`: also trusts this token-signing key (PEM, from `logferry
        /// keys export-verify --legacy`) for checkpoints an earlier release signed with
        /// it. Default with `--data-dir` alone: `<data-dir>/keys/signing.pub.pem`.
        #[arg(long, requires = "public_key")]
        legacy_public_key: Option<PathBuf>,
        /// A chain whose last signed checkpoint is older than this while links follow
        /// it, or with links and no checkpoint at all, is a finding. The default is 30
        /// times the default `--chain-checkpoint-interval` (10s), so a running backend
        /// never trips it; a backend that signs less often needs at least twice its
        /// interval. `0s`: any unsigned tail is a finding.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        max_unsigned_age: Duration,
        /// Files or directories (searched for `*.jsonl`, `*.msgpack` and manifests);
        /// default: `<data-dir>/files` and `<data-dir>/destinations`.
        paths: Vec<PathBuf>,
    },
    /// Print the configuration reference (docs/configuration.md) as Markdown.
    #[command(hide = true)]
    ConfigReference,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token for an access key and print it.
    Issue {
        /// The backend's data directory (its keys, registry and revocation list).
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Tenant registry; default: `<data-dir>/tenants.yaml`.
        #[arg(long, env = "LOGFERRY_TENANTS")]
        tenants: Option<PathBuf>,
        /// The access key the token is bound to (`sub`); it must be in the registry.
        #[arg(long)]
        access_key: String,
        /// Lifetime, like `30d` or `12h`.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Add a token id (jti) to the revocation list. A running backend applies it
    /// within seconds and closes the streams that use it.
    Revoke {
        /// The backend's data directory (its keys, registry and revocation list).
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Revocation list; default: `<data-dir>/revoked-tokens`.
        #[arg(long, env = "LOGFERRY_REVOKED_TOKENS")]
        revoked_tokens: Option<PathBuf>,
        /// Why, kept as a comment in the list.
        #[arg(long)]
        reason: Option<String>,
        /// The token id: the `jti` claim, or `x509:<serial in hex>` for a client
        /// certificate's session.
        jti: String,
    },
    /// Decode a token and say whether this backend accepts it, and if not, why.
    /// Exits 1 when it is not valid.
    Inspect {
        /// The backend's data directory (its keys, registry and revocation list).
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Tenant registry; default: `<data-dir>/tenants.yaml`.
        #[arg(long, env = "LOGFERRY_TENANTS")]
        tenants: Option<PathBuf>,
        /// Revocation list; default: `<data-dir>/revoked-tokens`.
        #[arg(long, env = "LOGFERRY_REVOKED_TOKENS")]
        revoked_tokens: Option<PathBuf>,
        /// The token (a compact JWT).
        token: String,
    },
}

/// `ingest` and `route` take the flags of `serve` (those of the embedded buffer are
/// ignored) and the Kafka flags.
#[derive(Debug, clap::Args)]
struct KafkaRoleArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
}

/// `route` takes the flags of `ingest` and how many consumers each destination runs.
#[derive(Debug, clap::Args)]
struct RouteArgs {
    #[command(flatten)]
    role: KafkaRoleArgs,
    /// Consumers each destination runs in this process, each a member of the
    /// destination's consumer group: up to this many of its partitions are delivered
    /// at once. More than the partitions this router is given leaves some idle.
    #[arg(
        long,
        env = "LOGFERRY_ROUTE_CONSUMERS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    consumers: u16,
}

#[derive(Debug, Subcommand)]
enum KafkaCommand {
    /// Create the topic (an existing one is left as it is).
    Init {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions: the most routers that can share one destination's work.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replicas of each partition.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// One line per dead letter: destination, number, time, origin, reason.
    List {
        /// The backend's data directory.
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Only this destination.
        #[arg(long)]
        destination: Option<String>,
    },
    /// One dead letter in full (JSON).
    Show {
        /// The backend's data directory.
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Print the chunk or batch bytes (base64) too.
        #[arg(long)]
        with_payload: bool,
        /// The destination, as `list` prints it.
        destination: String,
        /// The number `list` prints after `#`.
        number: usize,
    },
    /// Deliver dead letters again after fixing their cause. Takes `serve`'s flags
    /// (data directory, registry) to build the destination as the backend does, and
    /// needs the backend stopped. Each dead letter is delivered once, however often
    /// this runs; what the sink refuses again becomes a new dead letter.
    Replay {
        #[command(flatten)]
        serve: Box<ServeArgs>,
        /// Only this dead letter (the number `list` prints after `#`); repeatable.
        /// Default: all that were not replayed yet.
        #[arg(long = "entry")]
        entries: Vec<u64>,
        /// The destination, as `list` prints it.
        destination: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a tenant's next encryption key pair. The private key stays in
    /// `<data-dir>/keys/tenants/<tenant>/<id>.key` for routers; the registry lines
    /// that hand the public key to agents are printed.
    Generate {
        /// The backend's data directory (its keys, registry and revocation list).
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// The tenant the key is for.
        #[arg(long)]
        tenant: String,
        /// Key id; default: one above the highest present.
        #[arg(long)]
        key_id: Option<u32>,
    },
    /// Print the checkpoint key's public half (PEM), which checks the file sink's
    /// signed checkpoints and manifests, for auditors to run `logferry verify
    /// --public-key FILE PATHS...` without the backend.
    ExportVerify {
        /// The backend's data directory.
        #[arg(long, env = "LOGFERRY_DATA_DIR", default_value = "./logferry-data")]
        data_dir: PathBuf,
        /// Export the token-signing key instead, which checks the checkpoints that
        /// releases before the checkpoint key signed (`verify --legacy-public-key`).
        #[arg(long)]
        legacy: bool,
        /// Write the key to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(serve::run(args)),
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
        Command::Token(TokenCommand::Revoke {
            data_dir,
            revoked_tokens,
            reason,
            jti,
        }) => {
            let path = revoked_tokens.unwrap_or_else(|| data_dir.join("revoked-tokens"));
            if revoke(&path, &jti, reason.as_deref())? {
                eprintln!(
                    "revoked {jti} in {}; a running backend applies it within seconds",
                    path.display()
                );
            } else {
                eprintln!("{jti} was revoked already in {}", path.display());
            }
            Ok(())
        }
        Command::Token(TokenCommand::Inspect {
            data_dir,
            tenants,
            revoked_tokens,
            token,
        }) => inspect(&data_dir, tenants, revoked_tokens, &token),
        Command::Keys(KeysCommand::Generate {
            data_dir,
            tenant,
            key_id,
        }) => {
            let ring = KeyRing::new(keys_dir(&data_dir));
            let (id, public) = ring.generate(&tenant, key_id)?;
            eprintln!(
                "created key id {id} of tenant `{tenant}`; its private half is in {}.\n\
                 Copy that file to every router (`logferry serve` / `logferry route`) before \
                 agents use the key, then set these lines in the tenant's entry of the \
                 registry; agents switch within seconds, and batches sealed under older ids \
                 still open while their key files stay:\n",
                keys_dir(&data_dir)
                    .join(&tenant)
                    .join(format!("{id}.key"))
                    .display()
            );
            print!(
                "    encryption:\n      key_id: {id}\n      public_key: \"{}\"\n",
                public.to_base64()
            );
            Ok(())
        }
        Command::Keys(KeysCommand::ExportVerify {
            data_dir,
            legacy,
            output,
        }) => {
            let stem = if legacy { TOKEN_KEY } else { CHECKPOINT_KEY };
            let key = public_path(&data_dir.join("keys"), stem);
            let pem = std::fs::read(&key).with_context(|| {
                format!(
                    "reading the public key `{}` (it is created at the first `logferry serve`)",
                    key.display()
                )
            })?;
            // Only a key `verify` can use is exported.
            CheckpointVerifier::from_pem(&pem)
                .with_context(|| format!("`{}` is not a usable public key", key.display()))?;
            let flag = if legacy {
                "--legacy-public-key"
            } else {
                "--public-key"
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, &pem)
                        .with_context(|| format!("writing `{}`", path.display()))?;
                    eprintln!(
                        "wrote the verification key to {}; check files with `logferry verify \
                         {flag} {} PATHS...`",
                        path.display(),
                        path.display()
                    );
                }
                None => std::io::Write::write_all(&mut std::io::stdout(), &pem)?,
            }
            Ok(())
        }
        Command::DeadLetter(DeadLetterCommand::List {
            data_dir,
            destination,
        }) => logferry_backend::deadletter::list(&data_dir, destination.as_deref()).map(|_| ()),
        Command::DeadLetter(DeadLetterCommand::Show {
            data_dir,
            with_payload,
            destination,
            number,
        }) => logferry_backend::deadletter::show(&data_dir, &destination, number, with_payload),
        Command::DeadLetter(DeadLetterCommand::Replay {
            serve,
            entries,
            destination,
        }) => logferry_backend::deadletter::replay(&serve, &destination, &entries),
        Command::ConfigReference => {
            print!("{}", config_reference());
            Ok(())
        }
        Command::Ingest(args) => {
            runtime()?.block_on(serve::run_role(args.serve, serve::Role::Ingest(args.kafka)))
        }
        Command::Route(args) => runtime()?.block_on(serve::run_route(
            args.role.serve,
            args.role.kafka,
            usize::from(args.consumers),
        )),
        Command::Kafka(KafkaCommand::Init {
            kafka,
            partitions,
            replication,
        }) => runtime()?.block_on(logferry_backend::kafka::init(
            &kafka,
            partitions,
            replication,
        )),
        Command::Verify {
            data_dir,
            public_key,
            legacy_public_key,
            max_unsigned_age,
            paths,
        } => {
            let verifier = trusted_keys(&data_dir, public_key, legacy_public_key)?;
            let require_manifest = paths.is_empty();
            let paths = if paths.is_empty() {
                ["files", "destinations"]
                    .iter()
                    .map(|d| data_dir.join(d))
                    .filter(|d| d.exists())
                    .collect()
            } else {
                paths
            };
            let options = logferry_backend::verify::Options {
                max_unsigned_age: Some(max_unsigned_age),
                require_manifest,
            };
            if logferry_backend::verify::verify_paths(
                &paths,
                &verifier,
                &options,
                &mut std::io::stdout(),
            )? {
                Ok(())
            } else {
                bail!("some files do not match their hash chains or manifests (see above)")
            }
        }
    }
}

/// The keys `verify` trusts: pinned ones, or those found in the data directory,
/// each announced on stderr.
fn trusted_keys(
    data_dir: &Path,
    public_key: Option<PathBuf>,
    legacy_public_key: Option<PathBuf>,
) -> Result<CheckpointVerifier> {
    let mut verifier = CheckpointVerifier::default();
    let mut trust = |path: &Path, role: KeyRole, pinned: bool| -> Result<()> {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the public key `{}`", path.display()))?;
        verifier
            .trust(&pem, role, &path.display().to_string())
            .with_context(|| format!("`{}` is not a usable public key", path.display()))?;
        let key = verifier.keys().last().expect("just trusted");
        let what = match role {
            KeyRole::Checkpoint => "checkpoints and manifests",
            KeyRole::Legacy => "checkpoints of a release before the checkpoint key",
        };
        if pinned {
            eprintln!(
                "verify: trusting {} pinned by {} for {what}",
                key.describe(),
                path.display()
            );
        } else {
            eprintln!(
                "verify: trusting {} found in the data directory ({}) for {what}; whoever can \
                 write that directory can replace it and re-sign: pin a copy kept elsewhere \
                 with --public-key",
                key.describe(),
                path.display()
            );
        }
        Ok(())
    };
    let keys = data_dir.join("keys");
    match public_key {
        Some(pinned) => {
            trust(&pinned, KeyRole::Checkpoint, true)?;
            if let Some(legacy) = legacy_public_key {
                trust(&legacy, KeyRole::Legacy, true)?;
            }
        }
        None => {
            let checkpoint = public_path(&keys, CHECKPOINT_KEY);
            let legacy = public_path(&keys, TOKEN_KEY);
            if !checkpoint.exists() && !legacy.exists() {
                bail!(
                    "no public key in `{}`: pass --data-dir of the backend, or --public-key",
                    keys.display()
                );
            }
            if checkpoint.exists() {
                trust(&checkpoint, KeyRole::Checkpoint, false)?;
            }
            if legacy.exists() {
                trust(&legacy, KeyRole::Legacy, false)?;
            }
        }
    }
    Ok(verifier)
}

/// docs/configuration.md: every plugin property and every flag, from the doc comments
/// of the config structs. A test keeps the committed file equal to this.
fn config_reference() -> String {
    use clap::CommandFactory;
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code's doc comments by `logferry config-reference`; the \
         `config_reference` test fails when this file is out of date. Regenerate with:\n\n\
         ```sh\ncargo run -q -p logferry-backend -- config-reference > docs/configuration.md\n```\n\n\
         ## Plugin properties (`[OUTPUT]` with `Name logferry`)\n\n\
         | property | default | meaning |\n|---|---|---|\n",
    );
    for property in logferry_agent::PROPERTIES {
        let alias = logferry_agent::ALIASES
            .iter()
            .find(|(name, _)| *name == property.name)
            .map(|(_, alias)| format!(" (also `{alias}`)"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `{}`{alias} | {} | {} |\n",
            property.name,
            property.default.unwrap_or("required"),
            property.help
        ));
    }
    let cli = Cli::command();
    let mut commands = Vec::new();
    for command in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let subs: Vec<_> = command.get_subcommands().collect();
        if subs.is_empty() {
            commands.push((command.get_name().to_string(), command.clone()));
        }
        for sub in subs {
            commands.push((
                format!("{} {}", command.get_name(), sub.get_name()),
                sub.clone(),
            ));
        }
    }
    for (name, command) in commands {
        out.push_str(&format!("\n## `logferry {name}`\n\n"));
        if let Some(about) = command.get_about() {
            out.push_str(&format!("{about}\n\n"));
        }
        let args: Vec<_> = command
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
            .collect();
        if args.is_empty() {
            out.push_str("No flags.\n");
            continue;
        }
        out.push_str("| flag | environment | default | meaning |\n|---|---|---|---|\n");
        for arg in args {
            let flag = match arg.get_long() {
                Some(long) => format!("`--{long}`"),
                None => format!("`{}`", arg.get_id().as_str().to_uppercase()),
            };
            let env = arg
                .get_env()
                .map(|e| format!("`{}`", e.to_string_lossy()))
                .unwrap_or_default();
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| format!("`{}`", v.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", ");
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
                .unwrap_or_default();
            out.push_str(&format!("| {flag} | {env} | {default} | {help} |\n"));
        }
    }
    out
}

/// `logferry token inspect`: prints the header and claims, then the verdict.
fn inspect(
    data_dir: &Path,
    tenants: Option<PathBuf>,
    revoked_tokens: Option<PathBuf>,
    token: &str,
) -> Result<()> {
    let token = token.trim();
    let (header, claims) = decode_unverified(token).map_err(anyhow::Error::msg)?;
    println!("header: {header}");
    println!("claims: {claims}");
    for (name, label) in [("iat", "issued"), ("exp", "expires")] {
        if let Some(t) = claims[name]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        {
            println!("{label}: {}", t.to_rfc3339());
        }
    }
    let tenants = tenants.unwrap_or_else(|| data_dir.join("tenants.yaml"));
    let revoked = revoked_tokens.unwrap_or_else(|| data_dir.join("revoked-tokens"));
    let auth = Authenticator {
        tokens: Arc::new(TokenAuthority::load_or_create(&data_dir.join("keys"))?),
        live: Live::new(
            Arc::new(Registry::load(&tenants)?),
            Revocations::load(&revoked)?,
        ),
    };
    let access_key = claims["sub"].as_str().unwrap_or_default();
    let verdict = auth
        .tokens
        .verify(token, access_key)
        .map_err(|e| e.to_string())
        .and_then(|c| auth.authorize(&c).map_err(|s| s.message().to_string()));
    match verdict {
        Ok(principal) => {
            println!(
                "valid: access key `{}` of tenant `{}`",
                principal.access_key, principal.tenant
            );
            Ok(())
        }
        Err(reason) => bail!("not valid: {reason}"),
    }
}

fn main() -> ExitCode {
    logferry_backend::install_crypto_provider();
    let cli = Cli::parse();
    // SAFETY: `umask` only sets the process's creation mask and cannot fail; no other
    // thread creates files yet.
    unsafe {
        libc::umask(cli.umask as libc::mode_t);
    }
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logferry: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
