//! Dedup marks: per (tenant, agent id), the highest seq stored durably, and the
//! access key that owns the agent id.
//!
//! Rebuilt at start from `<data-dir>/marks.json` (written before the buffer releases
//! segments) and then from every record the buffer still holds, so a mark never
//! goes backwards across a restart, and an owner is never forgotten while a record
//! or the marks file names it.
//!
//! `marks.json` format. Version 2 (written since agent ids are bound to access keys):
//! `{"version": 2, "agents": {"<tenant>/<agent-hex>": {"stored": u64, "access_key":
//! "<key>"}}}`. Version 1, as earlier releases wrote it and still read here, is a bare
//! object `{"<tenant>/<agent-hex>": u64}` without owners: the owner then comes from the
//! buffer's records, or from the first access key that presents the agent id. Fields
//! are never renamed or reused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use logferry_buffer::EmbeddedLog;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;

/// (tenant, agent id).
pub type AgentKey = (String, [u8; 16]);

/// One agent's mark. `lock` serialises appends of that agent across streams.
#[derive(Debug, Default)]
pub struct AgentMark {
    pub lock: tokio::sync::Mutex<()>,
    pub stored: AtomicU64,
    /// The access key that first presented this agent id.
    owner: Mutex<Option<String>>,
}

impl AgentMark {
    /// Binds the agent id to `access_key` if it has no owner yet; `Err(owner)` when
    /// another access key owns it.
    pub fn claim(&self, access_key: &str) -> Result<(), String> {
        let mut owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        match owner.as_deref() {
            Some(existing) if existing != access_key => Err(existing.to_string()),
            Some(_) => Ok(()),
            None => {
                *owner = Some(access_key.to_string());
                Ok(())
            }
        }
    }

    fn owner(&self) -> Option<String> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
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

/// One agent in `marks.json` version 2.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedMark {
    stored: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedMarks {
    version: u32,
    agents: BTreeMap<String, SavedMark>,
}

/// Either version of `marks.json`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MarksFile {
    V2(SavedMarks),
    V1(BTreeMap<String, u64>),
}

impl Marks {
    pub const VERSION: u32 = 2;

    pub fn load(path: &Path, log: &EmbeddedLog) -> Result<Self> {
        let mut map: HashMap<AgentKey, SavedMark> = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading `{}`", path.display()))?;
            let saved: MarksFile = serde_json::from_str(&text)
                .with_context(|| format!("`{}` is not a marks file", path.display()))?;
            let saved = match saved {
                MarksFile::V2(saved) if saved.version == Self::VERSION => saved.agents,
                MarksFile::V2(saved) => anyhow::bail!(
                    "`{}` has version {}, this logferry reads 1 and {}",
                    path.display(),
                    saved.version,
                    Self::VERSION
                ),
                MarksFile::V1(v1) => v1
                    .into_iter()
                    .map(|(k, stored)| {
                        let mark = SavedMark {
                            stored,
                            access_key: None,
                        };
                        (k, mark)
                    })
                    .collect(),
            };
            for (k, mark) in saved {
                if let Some(key) = parse_key(&k) {
                    map.insert(key, mark);
                }
            }
        }
        log.scan_meta(|_, meta| {
            let mark = map.entry((meta.tenant.clone(), meta.agent_id)).or_default();
            mark.stored = mark.stored.max(meta.last_seq);
            mark.access_key
                .get_or_insert_with(|| meta.access_key.clone());
        })
        .context("scanning the buffer for dedup marks")?;
        let agents = map
            .into_iter()
            .map(|(k, saved)| {
                let mark = AgentMark {
                    stored: AtomicU64::new(saved.stored),
                    owner: Mutex::new(saved.access_key),
                    ..Default::default()
                };
                (k, Arc::new(mark))
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
        let agents: BTreeMap<String, SavedMark> = {
            let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            agents
                .iter()
                .map(|(k, m)| {
                    let saved = SavedMark {
                        stored: m.stored.load(Ordering::Acquire),
                        access_key: m.owner(),
                    };
                    (key_string(k), saved)
                })
                .collect()
        };
        let snapshot = SavedMarks {
            version: Self::VERSION,
            agents,
        };
        let json = serde_json::to_vec_pretty(&snapshot)?;
        write_atomic(path, &json).with_context(|| format!("writing `{}`", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_survive_a_restart_and_version_1_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) =
            EmbeddedLog::open(logferry_buffer::LogConfig::new(dir.path().join("buffer"))).unwrap();
        let path = dir.path().join("marks.json");
        let agent = ("acme".to_string(), [7u8; 16]);
        std::fs::write(&path, format!(r#"{{"{}": 41}}"#, key_string(&agent))).unwrap();
        let marks = Marks::load(&path, &log).unwrap();
        let mark = marks.agent(agent.clone());
        assert_eq!(mark.stored.load(Ordering::Acquire), 41, "version 1 read");
        assert_eq!(
            mark.claim("ak_a"),
            Ok(()),
            "the first key to present it owns it"
        );
        assert_eq!(mark.claim("ak_b"), Err("ak_a".into()));
        marks.persist().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""version": 2"#), "{text}");

        let again = Marks::load(&path, &log).unwrap();
        let mark = again.agent(agent);
        assert_eq!(mark.stored.load(Ordering::Acquire), 41);
        assert_eq!(mark.claim("ak_b"), Err("ak_a".into()), "the owner is kept");
        assert_eq!(mark.claim("ak_a"), Ok(()));

        std::fs::write(&path, r#"{"version": 3, "agents": {}}"#).unwrap();
        let err = Marks::load(&path, &log).unwrap_err();
        assert!(format!("{err:#}").contains("has version 3"), "{err:#}");
    }
}
