//! Dedup marks: per (tenant, agent id), the highest seq stored durably.
//!
//! Rebuilt at start from `<data-dir>/marks.json` (written before the buffer releases
//! segments) and then from every record the buffer still holds, so a mark never
//! goes backwards across a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use logferry_buffer::EmbeddedLog;

use crate::fsutil::write_atomic;

/// (tenant, agent id).
pub type AgentKey = (String, [u8; 16]);

/// One agent's mark. `lock` serialises appends of that agent across streams.
#[derive(Debug, Default)]
pub struct AgentMark {
    pub lock: tokio::sync::Mutex<()>,
    pub stored: AtomicU64,
}

#[derive(Debug)]
pub struct Marks {
    /// `None`: kept in memory only (the stateless ingest tier).
    path: Option<PathBuf>,
    agents: Mutex<HashMap<AgentKey, Arc<AgentMark>>>,
}

/// `tenant/agent-hex`, the key used in files.
pub fn key_string(key: &AgentKey) -> String {
    format!("{}/{}", key.0, hex::encode(key.1))
}

fn parse_key(s: &str) -> Option<AgentKey> {
    let (tenant, agent) = s.rsplit_once('/')?;
    let bytes: [u8; 16] = hex::decode(agent).ok()?.try_into().ok()?;
    Some((tenant.to_string(), bytes))
}

impl Marks {
    pub fn load(path: &Path, log: &EmbeddedLog) -> Result<Self> {
        let mut map: HashMap<AgentKey, u64> = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading `{}`", path.display()))?;
            let saved: BTreeMap<String, u64> = serde_json::from_str(&text)
                .with_context(|| format!("`{}` is not a marks file", path.display()))?;
            for (k, seq) in saved {
                if let Some(key) = parse_key(&k) {
                    map.insert(key, seq);
                }
            }
        }
        log.scan_meta(|_, meta| {
            let mark = map.entry((meta.tenant.clone(), meta.agent_id)).or_default();
            *mark = (*mark).max(meta.last_seq);
        })
        .context("scanning the buffer for dedup marks")?;
        let agents = map
            .into_iter()
            .map(|(k, seq)| {
                (
                    k,
                    Arc::new(AgentMark {
                        stored: AtomicU64::new(seq),
                        ..Default::default()
                    }),
                )
            })
            .collect();
        Ok(Self {
            path: Some(path.to_path_buf()),
            agents: Mutex::new(agents),
        })
    }

    /// Marks kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            agents: Mutex::new(HashMap::new()),
        }
    }

    pub fn agent(&self, key: AgentKey) -> Arc<AgentMark> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.entry(key).or_default().clone()
    }

    /// Every agent with a mark.
    pub fn keys(&self) -> Vec<AgentKey> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.agents.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every mark durably. Call before the buffer releases segments.
    pub fn persist(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let snapshot: BTreeMap<String, u64> = {
            let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            agents
                .iter()
                .map(|(k, m)| (key_string(k), m.stored.load(Ordering::Acquire)))
                .collect()
        };
        let json = serde_json::to_vec_pretty(&snapshot)?;
        write_atomic(path, &json).with_context(|| format!("writing `{}`", path.display()))
    }
}
