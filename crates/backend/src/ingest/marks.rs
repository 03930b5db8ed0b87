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
    /// The access key that first presented this agent id (set under the agents' map
    /// lock, see [`Marks::claim`]).
    owner: Mutex<Option<String>>,
}

impl AgentMark {
    fn owner(&self) -> Option<String> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why [`Marks::claim`] refused an agent id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Another access key first presented it.
    #[error("it belongs to access key `{0}`")]
    Owned(String),
    /// The access key owns as many agent ids as it may.
    #[error("access key `{0}` already has {1} agent ids, the most --max-agents-per-key allows")]
    TooMany(String, usize),
}

#[derive(Debug, Default)]
struct Agents {
    marks: HashMap<AgentKey, Arc<AgentMark>>,
    /// How many agent ids each access key owns.
    owned: HashMap<String, usize>,
}

#[derive(Debug)]
pub struct Marks {
    /// `None`: kept in memory only (the stateless ingest tier).
    path: Option<PathBuf>,
    agents: Mutex<Agents>,
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
        let mut agents = Agents::default();
        for (k, saved) in map {
            if let Some(owner) = &saved.access_key {
                *agents.owned.entry(owner.clone()).or_default() += 1;
            }
            let mark = AgentMark {
                stored: AtomicU64::new(saved.stored),
                owner: Mutex::new(saved.access_key),
                ..Default::default()
            };
            agents.marks.insert(k, Arc::new(mark));
        }
        Ok(Self {
            path: Some(path.to_path_buf()),
            agents: Mutex::new(agents),
        })
    }

    /// Marks kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            agents: Mutex::default(),
        }
    }

    /// The mark of `key` for a stream of `access_key`: the agent id becomes the key's
    /// if it has no owner yet, unless the key owns `max_per_key` ids already. Refused
    /// when another key owns it.
    pub fn claim(
        &self,
        key: AgentKey,
        access_key: &str,
        max_per_key: usize,
    ) -> Result<Arc<AgentMark>, ClaimError> {
        let mut guard = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        let agents = &mut *guard;
        if let Some(mark) = agents.marks.get(&key) {
            let mut owner = mark.owner.lock().unwrap_or_else(|e| e.into_inner());
            match owner.as_deref() {
                Some(existing) if existing != access_key => {
                    return Err(ClaimError::Owned(existing.to_string()));
                }
                Some(_) => return Ok(mark.clone()),
                None => {}
            }
            let owned = agents.owned.entry(access_key.to_string()).or_default();
            if *owned >= max_per_key {
                return Err(ClaimError::TooMany(access_key.to_string(), *owned));
            }
            *owned += 1;
            *owner = Some(access_key.to_string());
            return Ok(mark.clone());
        }
        let owned = agents.owned.entry(access_key.to_string()).or_default();
        if *owned >= max_per_key {
            return Err(ClaimError::TooMany(access_key.to_string(), *owned));
        }
        *owned += 1;
        let mark = Arc::new(AgentMark {
            owner: Mutex::new(Some(access_key.to_string())),
            ..Default::default()
        });
        agents.marks.insert(key, mark.clone());
        Ok(mark)
    }

    /// Every agent with a mark.
    pub fn keys(&self) -> Vec<AgentKey> {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.marks.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .marks
            .len()
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
                .marks
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
        let mark = marks.claim(agent.clone(), "ak_a", 2).unwrap();
        assert_eq!(mark.stored.load(Ordering::Acquire), 41, "version 1 read");
        assert_eq!(
            marks.claim(agent.clone(), "ak_b", 2).unwrap_err(),
            ClaimError::Owned("ak_a".into()),
            "the first key to present it owns it"
        );
        // A key owns at most `max_per_key` ids.
        let other = |n: u8| ("acme".to_string(), [n; 16]);
        marks.claim(other(1), "ak_a", 2).unwrap();
        assert_eq!(
            marks.claim(other(2), "ak_a", 2).unwrap_err(),
            ClaimError::TooMany("ak_a".into(), 2)
        );
        assert_eq!(marks.len(), 2, "a refused id leaves no mark");
        marks.persist().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""version": 2"#), "{text}");

        let again = Marks::load(&path, &log).unwrap();
        let mark = again.claim(agent.clone(), "ak_a", 2).unwrap();
        assert_eq!(mark.stored.load(Ordering::Acquire), 41);
        assert_eq!(
            again.claim(agent, "ak_b", 2).unwrap_err(),
            ClaimError::Owned("ak_a".into()),
            "the owner is kept"
        );
        assert_eq!(
            again.claim(other(3), "ak_a", 2).unwrap_err(),
            ClaimError::TooMany("ak_a".into(), 2),
            "and so is the count"
        );

        std::fs::write(&path, r#"{"version": 3, "agents": {}}"#).unwrap();
        let err = Marks::load(&path, &log).unwrap_err();
        assert!(format!("{err:#}").contains("has version 3"), "{err:#}");
    }
}
