//! Per-agent silence and surge detection.
//!
//! A host that stops logging is the incident operators miss most: nothing fails,
//! nothing is dropped, there is simply nothing. Every agent's stored bytes are
//! sampled once per window and compared with the agent's own baseline, an
//! exponentially weighted mean of its earlier windows:
//!
//! - `logferry_agent_silent{tenant, agent}` is 1 once an agent that has sent before
//!   (or that the buffer knew at start) has stored nothing for `silence_after`;
//! - `logferry_agent_rate_anomaly{tenant, agent}` is +1 when a window's rate is over
//!   `factor` times the baseline, -1 when it is under the baseline divided by
//!   `factor` (a drop that is not yet silence), 0 otherwise, and 0 until the baseline
//!   has `WARMUP` windows behind it;
//! - `logferry_agent_last_seen_seconds{tenant, agent}` is the Unix time of its last
//!   stored batch (or of the backend's start, for agents known from the buffer).
//!
//! State changes are logged once. An agent silent for `forget_after` is dropped from
//! the metrics (a decommissioned host should not alert forever).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::IntGaugeVec;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ingest::AgentKey;

/// Windows of history before the baseline is trusted.
const WARMUP: u32 = 5;
/// Weight of the newest window in the baseline.
const ALPHA: f64 = 0.2;

/// Thresholds of the detector.
#[derive(Debug, Clone, Copy)]
pub struct ActivityConfig {
    pub window: Duration,
    pub silence_after: Duration,
    pub factor: f64,
    pub forget_after: Duration,
}

#[derive(Debug)]
struct AgentActivity {
    /// Bytes stored since the last window closed.
    pending: u64,
    last_seen: Instant,
    last_seen_unix: i64,
    baseline: f64,
    windows: u32,
    silent: bool,
    anomaly: i64,
}

/// The gauges the detector keeps current.
#[derive(Debug, Clone)]
pub struct ActivityGauges {
    pub silent: IntGaugeVec,
    pub anomaly: IntGaugeVec,
    pub last_seen: IntGaugeVec,
}

/// See the module docs.
#[derive(Debug)]
pub struct Activity {
    config: ActivityConfig,
    agents: Mutex<HashMap<AgentKey, AgentActivity>>,
    gauges: ActivityGauges,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Activity {
    /// A detector that already knows `known` agents (from the buffer), as last seen
    /// now: one that never comes back is flagged silent after `silence_after`.
    pub fn new(config: ActivityConfig, gauges: ActivityGauges, known: Vec<AgentKey>) -> Self {
        let activity = Self {
            config,
            agents: Mutex::new(HashMap::new()),
            gauges,
        };
        let now = Instant::now();
        for key in known {
            activity.entry(key, now);
        }
        activity
    }

    fn entry(&self, key: AgentKey, now: Instant) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.entry(key).or_insert_with(|| AgentActivity {
            pending: 0,
            last_seen: now,
            last_seen_unix: unix_now(),
            baseline: 0.0,
            windows: 0,
            silent: false,
            anomaly: 0,
        });
    }

    /// Counts a stored batch of `bytes` for an agent.
    pub fn record(&self, key: &AgentKey, bytes: u64) {
        self.record_at(key, bytes, Instant::now());
    }

    fn record_at(&self, key: &AgentKey, bytes: u64, now: Instant) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let agent = agents.entry(key.clone()).or_insert_with(|| AgentActivity {
            pending: 0,
            last_seen: now,
            last_seen_unix: 0,
            baseline: 0.0,
            windows: 0,
            silent: false,
            anomaly: 0,
        });
        agent.pending += bytes;
        agent.last_seen = now;
        agent.last_seen_unix = unix_now();
    }

    /// Closes a window: updates every agent's state and gauges. `elapsed` is the
    /// window's real length.
    pub fn tick(&self, now: Instant, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.retain(|key, agent| {
            let labels = [key.0.as_str(), &hex::encode(key.1)];
            let quiet = now.saturating_duration_since(agent.last_seen);
            if quiet >= self.config.forget_after {
                info!(tenant = %key.0, agent = %labels[1], "agent silent for {quiet:?}; no longer tracked");
                let _ = self.gauges.silent.remove_label_values(&labels);
                let _ = self.gauges.anomaly.remove_label_values(&labels);
                let _ = self.gauges.last_seen.remove_label_values(&labels);
                return false;
            }
            let rate = agent.pending as f64 / secs;
            agent.pending = 0;

            let silent = quiet >= self.config.silence_after;
            if silent != agent.silent {
                if silent {
                    warn!(tenant = %key.0, agent = %labels[1], "agent silent: nothing stored for {quiet:?}");
                } else {
                    info!(tenant = %key.0, agent = %labels[1], "agent sends again");
                }
                agent.silent = silent;
            }
            let anomaly = if agent.windows < WARMUP || agent.baseline <= 0.0 || silent {
                0
            } else if rate > agent.baseline * self.config.factor {
                1
            } else if rate < agent.baseline / self.config.factor {
                -1
            } else {
                0
            };
            if anomaly != agent.anomaly {
                match anomaly {
                    1 => warn!(tenant = %key.0, agent = %labels[1], "agent rate surge: {rate:.0} B/s vs a baseline of {:.0} B/s", agent.baseline),
                    -1 => warn!(tenant = %key.0, agent = %labels[1], "agent rate drop: {rate:.0} B/s vs a baseline of {:.0} B/s", agent.baseline),
                    _ => info!(tenant = %key.0, agent = %labels[1], "agent rate back to its baseline"),
                }
                agent.anomaly = anomaly;
            }
            // Silence is its own signal; it does not teach the baseline that zero is
            // normal.
            if !silent {
                agent.baseline = if agent.windows == 0 {
                    rate
                } else {
                    ALPHA * rate + (1.0 - ALPHA) * agent.baseline
                };
                agent.windows = agent.windows.saturating_add(1);
            }
            self.gauges.silent.with_label_values(&labels).set(i64::from(silent));
            self.gauges.anomaly.with_label_values(&labels).set(anomaly);
            if agent.last_seen_unix > 0 {
                self.gauges
                    .last_seen
                    .with_label_values(&labels)
                    .set(agent.last_seen_unix);
            }
            true
        });
    }

    /// Closes a window every `config.window` until shutdown.
    pub fn spawn(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.window) => {}
                    () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
                }
                let now = Instant::now();
                self.tick(now, now - last);
                last = now;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn gauges() -> ActivityGauges {
        let vec =
            |name: &str| IntGaugeVec::new(Opts::new(name, "test"), &["tenant", "agent"]).unwrap();
        ActivityGauges {
            silent: vec("silent"),
            anomaly: vec("anomaly"),
            last_seen: vec("last_seen"),
        }
    }

    #[test]
    fn flags_silence_surges_and_drops_against_the_agents_own_baseline() {
        let config = ActivityConfig {
            window: Duration::from_secs(1),
            silence_after: Duration::from_secs(3),
            factor: 5.0,
            forget_after: Duration::from_secs(100),
        };
        let g = gauges();
        let quiet: AgentKey = ("t".into(), [1; 16]);
        let known: AgentKey = ("t".into(), [2; 16]);
        let activity = Activity::new(config, g.clone(), vec![known.clone()]);
        let start = Instant::now();
        let label = |k: &AgentKey| [k.0.clone(), hex::encode(k.1)];
        let silent = |k: &AgentKey| g.silent.with_label_values(&label(k)).get();
        let anomaly = |k: &AgentKey| g.anomaly.with_label_values(&label(k)).get();

        let mut at = start;
        // One window: `bytes` stored during it, then it closes.
        let mut window = |bytes: Option<u64>| {
            if let Some(bytes) = bytes {
                activity.record_at(&quiet, bytes, at);
            }
            at += Duration::from_secs(1);
            activity.tick(at, Duration::from_secs(1));
        };
        // A steady 1000 B/s: no anomaly once warm.
        for _ in 0..8 {
            window(Some(1000));
        }
        assert_eq!((silent(&quiet), anomaly(&quiet)), (0, 0));
        window(Some(20_000));
        assert_eq!(anomaly(&quiet), 1, "a 20x surge");
        for _ in 0..12 {
            window(Some(1000));
        }
        assert_eq!(anomaly(&quiet), 0, "back to normal");
        window(Some(50));
        assert_eq!(anomaly(&quiet), -1, "a 20x drop");
        // The agent known only from the buffer never sent: silent after 3 s.
        assert_eq!(silent(&known), 1);
        // Nothing for 3 windows: silent, and silence is not an anomaly.
        for _ in 0..3 {
            window(None);
        }
        assert_eq!((silent(&quiet), anomaly(&quiet)), (1, 0));
        window(Some(10));
        assert_eq!(silent(&quiet), 0, "sending again clears it");
        // Forgotten after `forget_after`.
        activity.tick(at + Duration::from_secs(200), Duration::from_secs(1));
        assert!(activity.agents.lock().unwrap().is_empty());
    }
}
