//! `logferry send`: ships lines from a file or stdin without Fluent Bit, through the
//! same agent core (spool, batches, acks) the plugin uses.
//!
//! Each line becomes one event `[[EventTime(now), {}], {"log": line}]`, exactly what
//! Fluent Bit's `tail` input produces, and lines are grouped into chunks of about
//! `--chunk-bytes`. The command exits 0 only once every chunk is acked.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use logferry_agent::{Agent, AgentConfig, AgentHooks, FlushOutcome};
use rmpv::Value;

/// Flags of `logferry send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// File to send, or `-` for standard input.
    #[arg(default_value = "-")]
    pub input: String,
    /// Tag of the records.
    #[arg(long, default_value = "logferry.send")]
    pub tag: String,
    /// Backend address (`https://host:port`).
    #[arg(long, env = "LOGFERRY_ENDPOINT")]
    pub endpoint: String,
    /// The access key, as listed in the backend's tenant registry.
    #[arg(long, env = "LOGFERRY_ACCESS_KEY")]
    pub access_key: String,
    /// The token bound to the access key.
    #[arg(long, env = "LOGFERRY_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
    /// A file holding the token (instead of `--access-token`).
    #[arg(
        long,
        env = "LOGFERRY_ACCESS_TOKEN_FILE",
        conflicts_with = "access_token"
    )]
    pub access_token_file: Option<PathBuf>,
    /// CA certificate(s) of the backend (PEM).
    #[arg(long, env = "LOGFERRY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Spool directory; keep it to resume an interrupted send. Default: a temporary one.
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Approximate size of each chunk.
    #[arg(long, default_value = "1M", value_parser = crate::serve::parse_size)]
    pub chunk_bytes: u64,
    /// Give up when not everything is acked after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn event_time_now() -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut data = Vec::with_capacity(8);
    data.extend_from_slice(&(now.as_secs() as u32).to_be_bytes());
    data.extend_from_slice(&now.subsec_nanos().to_be_bytes());
    Value::Ext(0, data)
}

/// Appends one tail-style event for `line` to `chunk`.
pub fn encode_line(line: &str, chunk: &mut Vec<u8>) {
    let event = Value::Array(vec![
        Value::Array(vec![event_time_now(), Value::Map(Vec::new())]),
        Value::Map(vec![(Value::from("log"), Value::from(line))]),
    ]);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(chunk, &event);
}

fn flush(agent: &Agent, tag: &str, chunk: &[u8]) -> Result<()> {
    let mut warned = false;
    loop {
        match agent.flush(tag, chunk) {
            FlushOutcome::Stored { .. } | FlushOutcome::Duplicate { .. } => return Ok(()),
            FlushOutcome::Full => {
                if !warned {
                    eprintln!("logferry send: spool full, waiting for the backend to catch up");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            FlushOutcome::Failed(e) => bail!("cannot spool a chunk: {e}"),
        }
    }
}

pub fn run(args: SendArgs) -> Result<()> {
    let temp;
    let spool = match &args.spool {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("logferry-send-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut props: HashMap<&str, String> = HashMap::new();
    props.insert("endpoint", args.endpoint.clone());
    props.insert("access_key", args.access_key.clone());
    if let Some(token) = &args.access_token {
        props.insert("access_token", token.clone());
    }
    if let Some(file) = &args.access_token_file {
        props.insert("access_token_file", file.display().to_string());
    }
    if let Some(ca) = &args.ca_file {
        props.insert("tls.ca_file", ca.display().to_string());
    }
    props.insert("buffer.path", spool.display().to_string());
    let config =
        AgentConfig::from_properties(|k| props.get(k).cloned()).context("logferry send")?;
    let agent = Agent::start(config, AgentHooks::default())?;

    let reader: Box<dyn Read> = if args.input == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("opening `{}`", args.input))?,
        )
    };
    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let mut lines = 0u64;
    let mut chunk = Vec::with_capacity(args.chunk_bytes as usize + 4096);
    let mut buf = String::new();
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).context("reading input")?;
        if n == 0 {
            break;
        }
        encode_line(buf.trim_end_matches(['\n', '\r']), &mut chunk);
        lines += 1;
        if chunk.len() as u64 >= args.chunk_bytes {
            flush(&agent, &args.tag, &chunk)?;
            chunk.clear();
            progress.set_message(format!(
                "{lines} lines read, {} chunks acked",
                agent.acked_seq()
            ));
            progress.tick();
        }
    }
    if !chunk.is_empty() {
        flush(&agent, &args.tag, &chunk)?;
    }
    let last = agent.last_seq();
    let deadline = Instant::now() + args.timeout;
    while agent.acked_seq() < last && Instant::now() < deadline {
        progress.set_message(format!(
            "{lines} lines read, {}/{last} chunks acked",
            agent.acked_seq()
        ));
        progress.tick();
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked = agent.acked_seq();
    progress.finish_and_clear();
    let report = agent.shutdown(Duration::from_secs(2));
    if acked < last {
        bail!(
            "{} of {last} chunk(s) not acked within {}; {}",
            last - acked,
            humantime::format_duration(args.timeout),
            if args.spool.is_some() {
                format!(
                    "they stay in {} and go out on the next run",
                    spool.display()
                )
            } else {
                "pass --spool DIR to keep them for a retry".to_string()
            }
        );
    }
    eprintln!(
        "logferry send: {lines} lines in {last} chunk(s) acked in {:.2?} ({report})",
        started.elapsed()
    );
    Ok(())
}
