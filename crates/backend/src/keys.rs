//! Tenants' payload decryption keys, held by routers only.
//!
//! One file per key: `<data-dir>/keys/tenants/<tenant>/<key_id>.key`, the base64 of
//! the 32-byte X25519 private key, owner-only. `logferry keys generate` creates the
//! next id and prints the registry lines that hand the public half to agents. Old
//! ids stay: a router opens batches sealed under every key it still holds, so a
//! rotation never strands data in the buffer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use logferry_agent::seal::{self, PrivateKey, PublicKey};

use crate::fsutil::write_private;
use crate::tenants::{EncryptionSpec, check_name};

/// The private keys a router opens batches with, read from disk on first use.
#[derive(Debug)]
pub struct KeyRing {
    dir: PathBuf,
    keys: Mutex<HashMap<(String, u32), PrivateKey>>,
}

/// Where the keys of a data directory live.
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("tenants")
}

impl KeyRing {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, tenant: &str, key_id: u32) -> PathBuf {
        self.dir.join(tenant).join(format!("{key_id}.key"))
    }

    /// The private key `key_id` of `tenant`. A key added after start (a rotation) is
    /// found on its first use.
    pub fn get(&self, tenant: &str, key_id: u32) -> Result<PrivateKey, String> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = keys.get(&(tenant.to_string(), key_id)) {
            return Ok(key.clone());
        }
        let path = self.path(tenant, key_id);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no private key id {key_id} for tenant `{tenant}` ({}: {e}); copy it to this \
                 router or re-create it with `logferry keys generate`",
                path.display()
            )
        })?;
        let key = PrivateKey::from_base64(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        keys.insert((tenant.to_string(), key_id), key.clone());
        Ok(key)
    }

    /// Creates key `key_id` (default: one above the highest present) for `tenant`.
    pub fn generate(&self, tenant: &str, key_id: Option<u32>) -> Result<(u32, PublicKey)> {
        check_name("tenant name", tenant)?;
        let dir = self.dir.join(tenant);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating `{}`", dir.display()))?;
        let key_id = match key_id {
            Some(0) => bail!("key ids start at 1 (0 means not encrypted)"),
            Some(id) => id,
            None => self.ids(tenant)?.last().map_or(1, |id| id + 1),
        };
        let path = self.path(tenant, key_id);
        if path.exists() {
            bail!(
                "`{}` exists already; a key id is never reused, pick another",
                path.display()
            );
        }
        let (private, public) = seal::generate();
        write_private(&path, format!("{}\n", private.to_base64()).as_bytes())
            .with_context(|| format!("writing `{}`", path.display()))?;
        Ok((key_id, public))
    }

    /// The key ids present for `tenant`, ascending.
    pub fn ids(&self, tenant: &str) -> Result<Vec<u32>> {
        let dir = self.dir.join(tenant);
        let mut ids = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e).with_context(|| format!("listing `{}`", dir.display())),
        };
        for entry in entries {
            let name = entry?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// The registry lines for a key.
pub fn encryption_spec(key_id: u32, public: &PublicKey) -> EncryptionSpec {
    EncryptionSpec {
        key_id,
        public_key: public.to_base64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_find_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::new(dir.path().to_path_buf());
        let (one, public_one) = ring.generate("acme", None).unwrap();
        let (two, _) = ring.generate("acme", None).unwrap();
        assert_eq!((one, two), (1, 2));
        assert_eq!(ring.ids("acme").unwrap(), vec![1, 2]);
        assert_eq!(ring.get("acme", 1).unwrap().public_key(), public_one);
        let err = ring.generate("acme", Some(2)).unwrap_err().to_string();
        assert!(err.contains("never reused"), "{err}");
        let err = ring.get("acme", 7).unwrap_err();
        assert!(
            err.starts_with("no private key id 7 for tenant `acme`"),
            "{err}"
        );
        // A key written after the first lookup is found.
        let (nine, public_nine) = ring.generate("acme", Some(9)).unwrap();
        assert_eq!(ring.get("acme", nine).unwrap().public_key(), public_nine);
        assert!(ring.generate("../x", None).is_err());
    }
}
