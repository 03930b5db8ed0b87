//! A real Kafka-protocol broker for the Kafka tests: `tansu` with SQLite storage in a
//! temporary directory, on a free loopback port, killed and restarted by the tests.
//!
//! `.ci/run` installs it (`cargo install tansu --locked --features dynostore,libsql`);
//! `TANSU_BIN` overrides where it is looked for.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `tansu` binary: `TANSU_BIN`, else on `PATH`, else in `~/.cargo/bin`.
pub fn tansu_bin() -> PathBuf {
    crate::find_tool("tansu", "TANSU_BIN").expect(
        "no `tansu` broker found: install it with `cargo install tansu --locked --features \
         dynostore,libsql` (as .ci/run does) or set TANSU_BIN",
    )
}

/// A running broker.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker storing in `dir/tansu.db` and waits until it accepts
    /// connections.
    pub fn start(dir: &Path, port: u16) -> Broker {
        let mut broker = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).expect("tansu log file");
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log"))
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A broker that is not running (yet): its address, for "broker down" tests.
    pub fn unstarted(dir: &Path, port: u16) -> Broker {
        Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
        }
    }

    /// `host:port` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then a new broker on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
