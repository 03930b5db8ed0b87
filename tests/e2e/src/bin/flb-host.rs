//! `flb-host`: runs the built plugin the way Fluent Bit does, without Fluent Bit.
//!
//! It `dlopen`s `libout_logferry.so` through the host emulator, creates one `[OUTPUT]`
//! instance from a credentials file (`logferry serve` writes `dev-credentials.env`)
//! and `--prop key=value` pairs, and flushes chunks: real Fluent Bit chunk files
//! (`--chunk FILE`) or lines turned into tail-style chunks (`--lines FILE`). A flush
//! answered with `FLB_RETRY` is retried, as Fluent Bit's scheduler would. At the end
//! it runs the exit path (which drains what is spooled) and unloads the plugin.
//!
//! The crash tests run it as a child process and SIGKILL it mid-stream; the quickstart
//! uses it to feed a backend through the real plugin.
//!
//! ```text
//! flb-host --env-file logferry-data/dev-credentials.env --buffer-path /var/lib/spool \
//!          --lines /var/log/syslog --tag host.syslog
//! ```

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fluent_bit_sys::{FLB_OK, FLB_RETRY};
use logferry_e2e::host::Host;

#[derive(Parser, Debug)]
#[command(about = "Drive the logferry Fluent Bit plugin like Fluent Bit does")]
struct Args {
    /// The plugin to load. Default: `libout_logferry.so` beside this binary.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// A `KEY=VALUE` file with LOGFERRY_ENDPOINT, LOGFERRY_ACCESS_KEY,
    /// LOGFERRY_ACCESS_TOKEN and LOGFERRY_CA_FILE (what `logferry serve` writes).
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// The instance's `buffer.path`.
    #[arg(long)]
    buffer_path: PathBuf,
    /// More `[OUTPUT]` properties, `KEY=VALUE`; they override the env file's.
    #[arg(long = "prop", value_name = "KEY=VALUE")]
    props: Vec<String>,
    /// A Fluent Bit chunk (msgpack) to flush; repeatable.
    #[arg(long = "chunk", value_name = "FILE")]
    chunks: Vec<PathBuf>,
    /// Lines to turn into tail-style chunks of about 1 MiB each.
    #[arg(long)]
    lines: Option<PathBuf>,
    /// Tag of every flush; with `--repeat` above 1 it gets a `.N` suffix so each copy is
    /// a distinct chunk.
    #[arg(long, default_value = "flb-host")]
    tag: String,
    /// Flush the whole input this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Skip the first N flushes (Fluent Bit re-delivering after a crash starts at the
    /// first chunk whose flush it did not see succeed).
    #[arg(long, default_value_t = 0)]
    start_at: usize,
    /// Pause between flushes, like Fluent Bit's flush interval.
    #[arg(long, value_parser = humantime_ms, default_value = "0")]
    interval: Duration,
    /// After the last flush, wait to be killed instead of exiting.
    #[arg(long)]
    hold: bool,
}

fn humantime_ms(value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("milliseconds expected: {e}"))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flb-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut properties = Vec::new();
    if let Some(env_file) = &args.env_file {
        let text = std::fs::read_to_string(env_file)
            .with_context(|| format!("reading {}", env_file.display()))?;
        for (name, value) in text.lines().filter_map(|l| l.split_once('=')) {
            let key = match name.trim() {
                "LOGFERRY_ENDPOINT" => "endpoint",
                "LOGFERRY_ACCESS_KEY" => "access_key",
                "LOGFERRY_ACCESS_TOKEN" => "access_token",
                "LOGFERRY_CA_FILE" => "tls.ca_file",
                _ => continue,
            };
            properties.push((key.to_string(), value.trim().to_string()));
        }
    }
    properties.push((
        "buffer.path".to_string(),
        args.buffer_path.display().to_string(),
    ));
    for prop in &args.props {
        let Some((key, value)) = prop.split_once('=') else {
            bail!("--prop {prop:?}: KEY=VALUE expected");
        };
        properties.retain(|(k, _)| k != key);
        properties.push((key.to_string(), value.to_string()));
    }

    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for path in &args.chunks {
        inputs.push(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    if let Some(path) = &args.lines {
        inputs.extend(line_chunks(path)?);
    }
    if inputs.is_empty() {
        bail!("nothing to flush: give --chunk FILE or --lines FILE");
    }

    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(logferry_e2e::plugin_path);
    let host = Host::load(&plugin).with_context(|| format!("loading {}", plugin.display()))?;
    let instance = host
        .init(&properties)
        .map_err(|e| anyhow::anyhow!("FLBPluginInit failed: {e}"))?;

    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let total = inputs.len() * args.repeat;
    let mut bytes = 0usize;
    for n in args.start_at..total {
        let chunk = &inputs[n % inputs.len()];
        let tag = if args.repeat > 1 {
            format!("{}.{}", args.tag, n / inputs.len())
        } else {
            args.tag.clone()
        };
        loop {
            match instance.flush(&tag, chunk) {
                FLB_OK => break,
                FLB_RETRY => std::thread::sleep(Duration::from_millis(100)),
                other => bail!("flush {n} answered {other}: Fluent Bit would drop the chunk"),
            }
        }
        bytes += chunk.len();
        writeln!(out, "flushed {n} {tag}")?;
        out.flush()?;
        if !args.interval.is_zero() {
            std::thread::sleep(args.interval);
        }
    }
    eprintln!(
        "flb-host: {} chunk(s), {bytes} bytes flushed in {:.2?}",
        total - args.start_at,
        started.elapsed()
    );
    if args.hold {
        writeln!(out, "holding")?;
        out.flush()?;
        loop {
            std::thread::park();
        }
    }
    let rc = instance.exit();
    writeln!(out, "exited {rc}")?;
    host.unload()?;
    Ok(())
}

/// Lines of `path` as tail-style chunks of about 1 MiB.
fn line_chunks(path: &PathBuf) -> Result<Vec<Vec<u8>>> {
    const CHUNK_BYTES: usize = 1 << 20;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        logferry_backend::send::encode_line(&line, &mut chunk);
        if chunk.len() >= CHUNK_BYTES {
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    Ok(chunks)
}
