//! Live configuration: the tenant registry and the token revocation list, reloaded
//! while the backend runs.
//!
//! Both files are watched (inotify, through the `notify` crate, on their
//! directories, so editors that replace a file and Kubernetes ConfigMap symlink
//! swaps are seen), re-read on SIGHUP, and polled every few seconds as a safety
//! net. A registry that fails to parse is not applied: the previous one stays in
//! force and the error, with its line and column, is logged and counted.
//!
//! Every applied change bumps a version that open streams watch: they re-check
//! their credentials (a disabled key or a revoked token ends the stream) and
//! config watches send agents their new settings.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::auth::Revocations;
use crate::metrics::Metrics;
use crate::tenants::{Registry, TenantStore};

/// How often the files are read even without an event.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Events closer together than this are handled as one.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The registry and revocation list in force.
pub struct Live {
    tenants: RwLock<Arc<dyn TenantStore>>,
    revoked: RwLock<Arc<Revocations>>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("version", &*self.version.borrow())
            .finish()
    }
}

impl Live {
    pub fn new(tenants: Arc<dyn TenantStore>, revoked: Revocations) -> Arc<Self> {
        Arc::new(Self {
            tenants: RwLock::new(tenants),
            revoked: RwLock::new(Arc::new(revoked)),
            version: watch::Sender::new(1),
        })
    }

    pub fn tenants(&self) -> Arc<dyn TenantStore> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn revoked(&self) -> Arc<Revocations> {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The version in force; it grows by one with every applied change.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Wakes on every applied change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn set_tenants(&self, tenants: Arc<dyn TenantStore>) {
        *self.tenants.write().unwrap_or_else(|e| e.into_inner()) = tenants;
        self.version.send_modify(|v| *v += 1);
    }

    pub fn set_revoked(&self, revoked: Revocations) {
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(revoked);
        self.version.send_modify(|v| *v += 1);
    }
}

/// Keeps [`Live`] in step with the files.
#[derive(Debug)]
pub struct Reloader {
    pub live: Arc<Live>,
    pub registry: PathBuf,
    pub revoked: PathBuf,
    pub metrics: Metrics,
    /// The destinations the router runs (they change on restart only).
    pub destinations: String,
}

/// Every tenant's destinations, to tell whether a reload changed them.
pub fn destinations_of(registry: &Registry) -> String {
    let all: Vec<_> = registry
        .file()
        .tenants
        .iter()
        .map(|t| (&t.name, &t.destinations))
        .collect();
    serde_json::to_string(&all).unwrap_or_default()
}

/// The last content seen of one file, so a reload applies real changes only.
#[derive(Debug, Default)]
struct Seen(Option<Vec<u8>>);

impl Seen {
    /// The file's content if it differs from what was seen; `Some(None)` when the
    /// file disappeared.
    fn changed(&mut self, path: &Path) -> Option<Option<Vec<u8>>> {
        let now = std::fs::read(path).ok();
        if now == self.0 {
            return None;
        }
        self.0.clone_from(&now);
        Some(now)
    }
}

impl Reloader {
    /// Starts watching; the task ends with `shutdown`.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let (tx, mut events) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })
            .context("starting the file watcher")?;
        for path in [&self.registry, &self.revoked] {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(
                    "cannot watch `{}` ({e}); changes are picked up by polling every {}s and on SIGHUP",
                    dir.display(),
                    POLL_INTERVAL.as_secs()
                );
            }
        }
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing a SIGHUP handler")?;
        let mut registry_seen = Seen(std::fs::read(&self.registry).ok());
        let mut revoked_seen = Seen(std::fs::read(&self.revoked).ok());
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    Some(()) = events.recv() => {
                        tokio::time::sleep(DEBOUNCE).await;
                        while events.try_recv().is_ok() {}
                    }
                    _ = hangup.recv() => info!("SIGHUP: re-reading the tenant registry and revocation list"),
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
                }
                self.reload(&mut registry_seen, &mut revoked_seen);
            }
        });
        Ok(())
    }

    fn reload(&self, registry_seen: &mut Seen, revoked_seen: &mut Seen) {
        if let Some(content) = registry_seen.changed(&self.registry) {
            let parsed = match content {
                None => Err(anyhow::anyhow!("the file is missing")),
                Some(bytes) => String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("the file is not UTF-8"))
                    .and_then(|text| Registry::parse(&text)),
            };
            match parsed {
                Ok(registry) => {
                    if destinations_of(&registry) != self.destinations {
                        warn!(
                            "the tenant registry changes destinations; those take effect at the \
                             next restart (access keys and agent settings apply now)"
                        );
                    }
                    self.live.set_tenants(Arc::new(registry));
                    self.applied("tenant registry", &self.registry);
                }
                Err(e) => {
                    self.metrics
                        .registry_reloads
                        .with_label_values(&["error"])
                        .inc();
                    error!(
                        "tenant registry `{}` not applied, the previous one stays in force: {e:#}",
                        self.registry.display()
                    );
                }
            }
        }
        if revoked_seen.changed(&self.revoked).is_some() {
            match Revocations::load(&self.revoked) {
                Ok(revoked) => {
                    self.metrics.revoked_tokens.set(revoked.len() as i64);
                    self.live.set_revoked(revoked);
                    self.applied("revocation list", &self.revoked);
                }
                Err(e) => {
                    self.metrics
                        .registry_reloads
                        .with_label_values(&["error"])
                        .inc();
                    error!("revocation list not applied: {e:#}");
                }
            }
        }
    }

    fn applied(&self, what: &str, path: &Path) {
        let version = self.live.version();
        self.metrics.registry_version.set(version as i64);
        self.metrics
            .registry_reloads
            .with_label_values(&["ok"])
            .inc();
        info!("{what} `{}` reloaded (version {version})", path.display());
    }
}
