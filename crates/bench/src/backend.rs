//! A real `logferry serve` process on a fresh data directory and a free port.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the backend may take to generate its keys and certificates and listen.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of its stderr kept for error messages.
const STDERR_TAIL: usize = 40;

/// What `dev-credentials.env` holds.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub endpoint: String,
    pub access_key: String,
    pub access_token: String,
    pub ca_file: PathBuf,
}

impl Credentials {
    fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim(), value.trim()))
            .collect();
        let var = |key: &str| {
            vars.get(key)
                .map(|value| value.to_string())
                .with_context(|| format!("{} has no {key}", path.display()))
        };
        Ok(Self {
            endpoint: var("LOGFERRY_ENDPOINT")?,
            access_key: var("LOGFERRY_ACCESS_KEY")?,
            access_token: var("LOGFERRY_ACCESS_TOKEN")?,
            ca_file: PathBuf::from(var("LOGFERRY_CA_FILE")?),
        })
    }
}

/// A running backend; stopped (SIGTERM, then SIGKILL) on [`Backend::stop`] or drop.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    pub data_dir: PathBuf,
    pub credentials: Credentials,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Backend {
    /// Runs `BIN serve --data-dir DATA_DIR --listen 127.0.0.1:0` and waits for its
    /// "listening" line.
    pub fn start(bin: &Path, data_dir: &Path) -> Result<Self> {
        Self::start_role(bin, data_dir, "serve", &[])
    }

    /// Runs `BIN ROLE --data-dir DATA_DIR ... EXTRA` (`serve`, `ingest` or `route`) and
    /// waits until it listens (or, for `route`, routes).
    pub fn start_role(bin: &Path, data_dir: &Path, role: &str, extra: &[String]) -> Result<Self> {
        let mut command = Command::new(bin);
        command.arg(role).arg("--data-dir").arg(data_dir);
        if role != "route" {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let ready_line = if role == "route" {
            "logferry: routing topic"
        } else {
            "logferry: listening on"
        };
        let mut child = command
            .args(["--metrics-listen", "off"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = tail.clone();
        // Reads stderr until the process exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(ready_line) {
                    let _ = ready_tx.send(());
                }
                let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                if lines.len() == STDERR_TAIL {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let mut backend = Self {
            child,
            data_dir: data_dir.to_path_buf(),
            credentials: Credentials {
                endpoint: String::new(),
                access_key: String::new(),
                access_token: String::new(),
                ca_file: PathBuf::new(),
            },
            stderr: tail,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Some(status) = backend.child.try_wait()? {
                bail!(
                    "the backend exited with {status} before listening:\n{}",
                    backend.stderr_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the backend did not listen within {READY_TIMEOUT:?}:\n{}",
                    backend.stderr_tail()
                );
            }
        }
        if role != "route" {
            backend.credentials = Credentials::read(&data_dir.join("dev-credentials.env"))?;
        }
        Ok(backend)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the backend printed on stderr.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .map(|line| format!("  | {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends SIGTERM and waits for the exit; kills it after [`STOP_TIMEOUT`].
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: `kill` only sends a signal; `pid` is our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the backend exited with {status}:\n{}", self.stderr_tail());
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the backend did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("bench: {e:#}");
        }
    }
}
