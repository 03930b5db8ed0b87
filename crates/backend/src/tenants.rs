//! The tenant registry: tenants, their access keys and the settings their agents
//! receive through config exchange.
//!
//! ```yaml
//! tenants:
//!   - name: acme                 # [A-Za-z0-9._-], 1-64 chars; used in file paths
//!     access_keys:
//!       - key: ak_web_frontend   # same charset, unique across all tenants
//!         disabled: false        # default false
//!         description: web tier  # optional
//!         client_cert_cn: web-01   # optional; a client certificate with this subject
//!                                #   CN (verified against --tls-client-ca) stands in
//!                                #   for a token of this key
//!     agent:                     # optional; each field optional, agents keep their own
//!       batch_max_bytes: 4M      #   setting for any field not given here, and a
//!       batch_max_delay: 50ms    #   property set in the [OUTPUT] section always wins
//!       compress: zstd           # zstd | none
//!     encryption:                # optional; absent: TLS alone protects the link
//!       key_id: 1                #   from `logferry keys generate --tenant acme`;
//!       public_key: "base64..."  #   routers hold the private half
//!     rate_limit:                # optional; over it, RESOURCE_EXHAUSTED + retry hint
//!       bytes_per_sec: 64M       #   compressed bytes on the wire
//!       batches_per_sec: 500
//!     destinations:              # optional; absent: the shared `files` destination
//!       - name: audit            #   same charset as tenant names, unique per tenant
//!         type: file             #   file | stdout | elasticsearch | loki | postgres | s3 | kafka
//!         match: "audit.*"       #   tag glob (`*`, `?`, `[...]`), default "*"
//!         access_keys: [ak_web]  #   default: every key of the tenant
//!         format: json           #   json (JSON lines) | msgpack (the raw events, file only)
//!         rotate_bytes: 256M     #   file: a new file once one holds this much, or
//!         rotate_age: 1h         #   once this backend has written to it this long
//!         gzip: true             #   file: gzip closed files (needs a rotate_* setting)
//!       - name: search
//!         type: elasticsearch    #   bulk API, deterministic _id
//!         url: https://es:9200
//!         index: logs-acme       #   default logferry-<tenant>
//!         username: logferry     #   optional basic auth, with
//!         password_file: /run/secrets/es   # the password in a file
//!       - name: loki
//!         type: loki             #   push API
//!         url: http://loki:3100
//!         labels: [level, app]   #   record keys that become labels, besides tenant
//!         max_label_values: 100  #   per label; then `__overflow__`
//!         org_id: acme           #   X-Scope-OrgID, default the tenant's name
//!       - name: db
//!         type: postgres         #   COPY, cursor in the same transaction
//!         url: postgresql://logferry@db:5432/logs
//!         table: logferry_records   # default; created if missing
//!         password_file: /run/secrets/pg
//!       - name: archive
//!         type: s3               #   one NDJSON object per step
//!         url: http://minio:9000 #   optional: an S3-compatible endpoint; default AWS
//!         bucket: logs
//!         region: us-east-1      #   default
//!         prefix: logferry       #   default; objects under <prefix>/<tenant>/<destination>/
//!         access_key_id: AKIA... #   optional, with secret_access_key_file;
//!         secret_access_key_file: /run/secrets/s3   # default the AWS_* environment
//!         compression: zstd      #   zstd | gzip | none
//!         batch_max_age: 10s     #   the least time between two objects
//!       - name: stream
//!         type: kafka            #   each record one message, its id first
//!         brokers: "k1:9092,k2:9092"
//!         topic: logs            #   must exist
//!         key: agent             #   agent | tag | tenant | none | record.<field>
//!         compression: lz4       #   none | gzip | lz4 | snappy
//!         properties_file: /run/secrets/kafka.properties   # librdkafka properties,
//!         properties:            #   then these
//!           security.protocol: sasl_ssl
//! ```
//!
//! Destinations are read at start; changing them needs a restart (a reload that
//! changes them says so in the log).
//!
//! The registry sits behind [`TenantStore`] so a database-backed store can replace
//! the file later.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use logferry_proto::v1::{AgentConfig, Compression};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The file format, as written by operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    pub tenants: Vec<TenantSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    pub access_keys: Vec<AccessKeySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Where this tenant's records go. Absent: the shared `files` destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<DestinationSpec>>,
}

/// One destination of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub name: String,
    /// `file`, `stdout`, `elasticsearch`, `loki`, `postgres`, `s3` or `kafka`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tag glob, as Fluent Bit's `Match`; default `*`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub tag_match: Option<String>,
    /// Only these access keys of the tenant; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_keys: Option<Vec<String>>,
    /// `json` (default) or `msgpack` (file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// elasticsearch, loki: base URL; postgres: connection URL; s3: the endpoint of
    /// S3-compatible storage (default AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// elasticsearch: the index; default `logferry-<tenant>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// postgres: the table; default `logferry_records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// loki: record keys that become stream labels (besides `tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// loki: distinct values a label may take before new ones become `__overflow__`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_label_values: Option<usize>,
    /// loki: `X-Scope-OrgID`; default the tenant's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// elasticsearch, loki: basic-auth user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// elasticsearch, loki, postgres: a file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// elasticsearch, loki, postgres: CA certificates (PEM) the server's TLS
    /// certificate is checked against; default: Mozilla's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// s3: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// s3: the region; default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// s3: the key prefix; default `logferry`. Objects go under
    /// `<prefix>/<tenant>/<destination>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// s3: the access key id; default the `AWS_*` environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// s3: a file holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<String>,
    /// s3: `zstd` (default), `gzip` or `none`. kafka: `none` (default), `gzip`, `lz4`
    /// or `snappy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// s3: the least time between two objects, like `10s` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_age: Option<String>,
    /// file: start a new file once one holds this much, like `256M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_bytes: Option<String>,
    /// file: start a new file once this backend has written to one for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_age: Option<String>,
    /// file: gzip closed files (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
    /// kafka: bootstrap brokers, `host:port[,host:port...]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// kafka: the topic (it must exist: `logferry kafka init` creates one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// kafka: each message's key: `agent` (default; an agent's records stay in order
    /// on one partition), `tag`, `tenant`, `none`, or `record.<field>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// kafka: librdkafka producer properties, passed as they are
    /// (`message.max.bytes: "2000000"`, `security.protocol: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
    /// kafka: a file of librdkafka properties (Java properties, Kafka's
    /// `client.properties` format), read at start, for secrets such as
    /// `sasl.password`; `properties` win over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties_file: Option<String>,
}

impl DestinationSpec {
    /// The sink-specific fields that are set, by name.
    fn sink_fields(&self) -> Vec<&'static str> {
        [
            ("url", self.url.is_some()),
            ("index", self.index.is_some()),
            ("table", self.table.is_some()),
            ("labels", self.labels.is_some()),
            ("max_label_values", self.max_label_values.is_some()),
            ("org_id", self.org_id.is_some()),
            ("username", self.username.is_some()),
            ("password_file", self.password_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("bucket", self.bucket.is_some()),
            ("region", self.region.is_some()),
            ("prefix", self.prefix.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            (
                "secret_access_key_file",
                self.secret_access_key_file.is_some(),
            ),
            ("compression", self.compression.is_some()),
            ("batch_max_age", self.batch_max_age.is_some()),
            ("rotate_bytes", self.rotate_bytes.is_some()),
            ("rotate_age", self.rotate_age.is_some()),
            ("gzip", self.gzip.is_some()),
            ("brokers", self.brokers.is_some()),
            ("topic", self.topic.is_some()),
            ("key", self.key.is_some()),
            ("properties", self.properties.is_some()),
            ("properties_file", self.properties_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// The key agents seal this tenant's batches to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSpec {
    /// 1 or more; names the private key file routers open with.
    pub key_id: u32,
    /// X25519 public key, base64 of 32 bytes.
    pub public_key: String,
}

/// Per-tenant ingest limits. Each field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Compressed payload bytes per second, like `64M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches_per_sec: Option<u32>,
}

/// A resolved rate limit; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub bytes_per_sec: u64,
    pub batches_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeySpec {
    pub key: String,
    /// Default false. A disabled key is refused with PERMISSION_DENIED.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Subject common name of the client certificate that authenticates this key
    /// (mutual TLS). Unique across all keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_cn: Option<String>,
}

/// Agent settings handed out by config exchange. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Like `4M`. Default: the agent's own (4M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_bytes: Option<String>,
    /// Like `50ms`. Default: the agent's own (50ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_delay: Option<String>,
    /// `zstd` or `none`. Default: the agent's own (zstd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
}

/// A resolved access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub access_key: String,
    pub disabled: bool,
}

/// Looks up access keys and agent settings.
pub trait TenantStore: Send + Sync {
    fn lookup(&self, access_key: &str) -> Option<Principal>;
    /// The access key a client certificate with subject CN `cn` authenticates.
    fn lookup_cert(&self, cn: &str) -> Option<Principal>;
    fn agent_config(&self, tenant: &str) -> AgentConfig;
    fn rate_limit(&self, tenant: &str) -> RateLimit;
}

/// The validated, indexed registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    keys: HashMap<String, Principal>,
    /// Client certificate CN to access key.
    certs: HashMap<String, String>,
    agents: HashMap<String, AgentConfig>,
    limits: HashMap<String, RateLimit>,
    file: RegistryFile,
}

/// Names used as path components: no separators, no dot-dot, nothing exotic.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("{what} `{name}` must be 1-64 characters of A-Z, a-z, 0-9, `.`, `_` or `-`");
    }
    Ok(())
}

/// A destination's state (checkpoint, dead letters, files, step marker) lives under
/// `<tenant>.<destination>`; names may hold dots, so two pairs could meet there
/// (`a` + `b.c` and `a.b` + `c`), or meet the shared destinations, and share one
/// checkpoint. Such a registry is refused, naming both.
fn check_state_names(file: &RegistryFile) -> Result<()> {
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    for shared in ["files", "stdout"] {
        seen.insert(shared.into(), (String::new(), shared.into()));
    }
    for tenant in &file.tenants {
        for spec in tenant.destinations.iter().flatten() {
            let state = format!("{}.{}", tenant.name, spec.name);
            let pair = (tenant.name.clone(), spec.name.clone());
            if let Some((t, d)) = seen.insert(state.clone(), pair) {
                bail!(
                    "destination `{}` of tenant `{}` and destination `{d}` of tenant `{t}` would \
                     share the state `{state}` (checkpoint, dead letters, files); rename one",
                    spec.name,
                    tenant.name
                );
            }
        }
    }
    Ok(())
}

impl Registry {
    /// Parses and validates a registry; errors carry the line and column.
    pub fn parse(text: &str) -> Result<Self> {
        let file: RegistryFile = serde_yaml_ng::from_str(text)?;
        Self::from_file(file)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the tenant registry `{}`", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the tenant registry `{}`", path.display()))
    }

    pub fn from_file(file: RegistryFile) -> Result<Self> {
        let mut registry = Registry {
            file: file.clone(),
            ..Registry::default()
        };
        for tenant in &file.tenants {
            check_name("tenant name", &tenant.name)?;
            if registry.agents.contains_key(&tenant.name) {
                bail!("tenant `{}` is listed twice", tenant.name);
            }
            let config = agent_config(tenant)
                .with_context(|| format!("in the settings of tenant `{}`", tenant.name))?;
            registry.agents.insert(tenant.name.clone(), config);
            let limit = rate_limit(tenant.rate_limit.as_ref())
                .with_context(|| format!("in the rate limit of tenant `{}`", tenant.name))?;
            registry.limits.insert(tenant.name.clone(), limit);
            check_destinations(tenant)
                .with_context(|| format!("in the destinations of tenant `{}`", tenant.name))?;
            for key in &tenant.access_keys {
                check_name("access key", &key.key)?;
                let principal = Principal {
                    tenant: tenant.name.clone(),
                    access_key: key.key.clone(),
                    disabled: key.disabled,
                };
                if let Some(cn) = &key.client_cert_cn
                    && let Some(other) = registry.certs.insert(cn.clone(), key.key.clone())
                {
                    bail!(
                        "client_cert_cn `{cn}` is given to access keys `{other}` and `{}`",
                        key.key
                    );
                }
                if let Some(previous) = registry.keys.insert(key.key.clone(), principal) {
                    bail!(
                        "access key `{}` is listed twice (tenants `{}` and `{}`)",
                        key.key,
                        previous.tenant,
                        tenant.name
                    );
                }
            }
        }
        check_state_names(&file)?;
        Ok(registry)
    }

    pub fn file(&self) -> &RegistryFile {
        &self.file
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml_ng::to_string(&self.file)?)
    }

    /// The registry `logferry serve` creates on embedded defaults: tenant `dev`
    /// with one random access key, encrypting to `encryption` when given.
    pub fn development(encryption: Option<EncryptionSpec>) -> Self {
        let mut bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut bytes);
        let file = RegistryFile {
            tenants: vec![TenantSpec {
                name: "dev".into(),
                access_keys: vec![AccessKeySpec {
                    key: format!("ak_dev_{}", hex::encode(bytes)),
                    disabled: false,
                    description: Some("created by `logferry serve` for development".into()),
                    client_cert_cn: None,
                }],
                agent: None,
                encryption,
                rate_limit: None,
                destinations: None,
            }],
        };
        Self::from_file(file).expect("the development registry is valid")
    }
}

impl TenantStore for Registry {
    fn lookup(&self, access_key: &str) -> Option<Principal> {
        self.keys.get(access_key).cloned()
    }

    fn lookup_cert(&self, cn: &str) -> Option<Principal> {
        self.certs.get(cn).and_then(|key| self.lookup(key))
    }

    fn agent_config(&self, tenant: &str) -> AgentConfig {
        self.agents.get(tenant).cloned().unwrap_or_default()
    }

    fn rate_limit(&self, tenant: &str) -> RateLimit {
        self.limits.get(tenant).copied().unwrap_or_default()
    }
}

fn check_destinations(tenant: &TenantSpec) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    // Two PostgreSQL destinations of one tenant into one table would insert the same
    // keys (tenant, agent, seq, idx): the second would stop at a unique violation.
    let mut tables = std::collections::HashMap::new();
    for spec in tenant
        .destinations
        .iter()
        .flatten()
        .filter(|s| s.kind == "postgres")
    {
        let table = (spec.url.clone(), spec.table.clone().unwrap_or_default());
        if let Some(other) = tables.insert(table, &spec.name) {
            bail!(
                "destinations `{other}` and `{}` write the same PostgreSQL table; give one \
                 of them its own `table`",
                spec.name
            );
        }
    }
    // Two Kafka destinations of one tenant on one topic would publish the same ids,
    // and each would take the other's messages for its own when it recovers.
    let mut topics = std::collections::HashMap::new();
    for spec in tenant
        .destinations
        .iter()
        .flatten()
        .filter(|s| s.kind == "kafka")
    {
        if let Some(other) = topics.insert((&spec.brokers, &spec.topic), &spec.name) {
            bail!(
                "destinations `{other}` and `{}` publish to the same Kafka topic; give one \
                 of them its own `topic`",
                spec.name
            );
        }
    }
    for spec in tenant.destinations.iter().flatten() {
        check_name("destination name", &spec.name)?;
        if !names.insert(spec.name.as_str()) {
            bail!("destination `{}` is listed twice", spec.name);
        }
        let what = format!("destination `{}`", spec.name);
        let allowed: &[&str] = match spec.kind.as_str() {
            "file" => &["rotate_bytes", "rotate_age", "gzip"],
            "stdout" => &[],
            "elasticsearch" => &["url", "index", "username", "password_file", "ca_file"],
            "loki" => &[
                "url",
                "labels",
                "max_label_values",
                "org_id",
                "username",
                "password_file",
                "ca_file",
            ],
            "postgres" => &["url", "table", "password_file", "ca_file"],
            "s3" => &[
                "url",
                "bucket",
                "region",
                "prefix",
                "access_key_id",
                "secret_access_key_file",
                "compression",
                "batch_max_age",
            ],
            "kafka" => &[
                "brokers",
                "topic",
                "key",
                "compression",
                "properties",
                "properties_file",
            ],
            other => bail!(
                "{what}: type `{other}` is not one of file, stdout, elasticsearch, loki, \
                 postgres, s3, kafka"
            ),
        };
        if spec.kind == "kafka" {
            if spec.brokers.is_none() || spec.topic.is_none() {
                bail!("{what}: type `kafka` needs `brokers` and `topic`");
            }
            if let Some(key) = &spec.key
                && crate::sinks::MessageKey::parse(key).is_none()
            {
                bail!("{what}: key `{key}` is not one of agent, tag, tenant, none, record.<field>");
            }
            if let Some(c) = &spec.compression
                && !["none", "gzip", "lz4", "snappy"].contains(&c.as_str())
            {
                bail!("{what}: compression `{c}` is not one of none, gzip, lz4, snappy");
            }
        }
        if let Some(size) = &spec.rotate_bytes {
            logferry_agent::config::parse_size("rotate_bytes", size)
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        }
        if let Some(age) = &spec.rotate_age {
            humantime::parse_duration(age)
                .map_err(|e| anyhow::anyhow!("{what}: rotate_age `{age}`: {e}"))?;
        }
        if spec.gzip == Some(true) && spec.rotate_bytes.is_none() && spec.rotate_age.is_none() {
            bail!("{what}: `gzip` compresses closed files; set rotate_bytes or rotate_age");
        }
        if spec.kind == "s3" {
            if spec.bucket.is_none() {
                bail!("{what}: type `s3` needs `bucket`");
            }
            if spec.access_key_id.is_some() != spec.secret_access_key_file.is_some() {
                bail!("{what}: `access_key_id` and `secret_access_key_file` go together");
            }
            if let Some(c) = &spec.compression
                && crate::sinks::ObjectCompression::parse(c).is_none()
            {
                bail!("{what}: compression `{c}` is not one of zstd, gzip, none");
            }
            if let Some(age) = &spec.batch_max_age {
                humantime::parse_duration(age)
                    .map_err(|e| anyhow::anyhow!("{what}: batch_max_age `{age}`: {e}"))?;
            }
        }
        if let Some(field) = spec
            .sink_fields()
            .into_iter()
            .find(|f| !allowed.contains(f))
        {
            bail!("{what}: `{field}` does not apply to type `{}`", spec.kind);
        }
        if allowed.contains(&"url") && spec.kind != "s3" && spec.url.is_none() {
            bail!("{what}: type `{}` needs `url`", spec.kind);
        }
        if let Some(table) = &spec.table
            && !(table.len() <= 63
                && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && table
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        {
            bail!("{what}: table `{table}` is not [a-z_][a-z0-9_]*, at most 63 characters");
        }
        if spec.max_label_values == Some(0) {
            bail!("{what}: max_label_values must be at least 1");
        }
        match spec.format.as_deref() {
            None | Some("json") => {}
            Some("msgpack") if spec.kind == "file" => {}
            Some(other) => {
                bail!("{what}: format `{other}` is not one of json, msgpack (file only)")
            }
        }
        if let Some(pattern) = &spec.tag_match {
            glob::Pattern::new(pattern)
                .map_err(|e| anyhow::anyhow!("{what}: match `{pattern}`: {e}"))?;
        }
        for key in spec.access_keys.iter().flatten() {
            if !tenant.access_keys.iter().any(|k| &k.key == key) {
                bail!("{what}: access key `{key}` is not a key of this tenant");
            }
        }
    }
    Ok(())
}

fn rate_limit(spec: Option<&RateLimitSpec>) -> Result<RateLimit> {
    let Some(spec) = spec else {
        return Ok(RateLimit::default());
    };
    let bytes_per_sec = match &spec.bytes_per_sec {
        Some(size) => logferry_agent::config::parse_size("bytes_per_sec", size)?,
        None => 0,
    };
    Ok(RateLimit {
        bytes_per_sec,
        batches_per_sec: spec.batches_per_sec.unwrap_or(0),
    })
}

fn agent_config(tenant: &TenantSpec) -> Result<AgentConfig> {
    let mut config = AgentConfig {
        tenant: tenant.name.clone(),
        ..AgentConfig::default()
    };
    if let Some(encryption) = &tenant.encryption {
        if encryption.key_id == 0 {
            bail!("encryption.key_id must be 1 or more (0 means not encrypted)");
        }
        let key = logferry_agent::seal::PublicKey::from_base64(&encryption.public_key)
            .map_err(|e| anyhow::anyhow!("encryption.public_key: {e}"))?;
        config.encryption_key_id = encryption.key_id;
        config.encryption_public_key = key.to_bytes();
    }
    let Some(spec) = &tenant.agent else {
        return Ok(config);
    };
    if let Some(size) = &spec.batch_max_bytes {
        config.batch_max_bytes = logferry_agent::config::parse_size("batch_max_bytes", size)?;
    }
    if let Some(delay) = &spec.batch_max_delay {
        let delay = logferry_agent::config::parse_duration("batch_max_delay", delay)?;
        config.batch_max_delay_ms = delay.as_millis().try_into().unwrap_or(u32::MAX);
    }
    if let Some(compress) = &spec.compress {
        config.compression = Some(match compress.as_str() {
            "zstd" => Compression::Zstd as i32,
            "none" => Compression::None as i32,
            other => bail!("compress: expected zstd or none, got `{other}`"),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "
tenants:
  - name: acme
    access_keys:
      - key: ak_web
      - key: ak_old
        disabled: true
    agent:
      batch_max_bytes: 1M
      batch_max_delay: 20ms
      compress: none
  - name: globex
    access_keys:
      - key: ak_db
";

    #[test]
    fn parses_and_indexes() {
        let r = Registry::parse(SAMPLE).unwrap();
        let p = r.lookup("ak_old").unwrap();
        assert_eq!((p.tenant.as_str(), p.disabled), ("acme", true));
        assert_eq!(r.lookup("ak_db").unwrap().tenant, "globex");
        assert!(r.lookup("nope").is_none());
        let c = r.agent_config("acme");
        assert_eq!(
            (c.batch_max_bytes, c.batch_max_delay_ms, c.compression),
            (1 << 20, 20, Some(0))
        );
        assert_eq!(r.agent_config("globex").batch_max_bytes, 0);
        assert_eq!(
            r.agent_config("globex").compression,
            None,
            "the agent keeps its own"
        );
        let again = Registry::parse(&r.to_yaml().unwrap()).unwrap();
        assert_eq!(again.file(), r.file());
    }

    #[test]
    fn clear_errors() {
        let err = Registry::parse("tenants:\n  - name: a\n    access_keys: []\n    colour: red\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `colour`") && err.contains("line 4"),
            "{err}"
        );
        let err = Registry::parse("tenants:\n  - name: ../etc\n    access_keys: []\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "tenant name `../etc` must be 1-64 characters of A-Z, a-z, 0-9, `.`, `_` or `-`"
        );
        let dup = "tenants:\n  - name: a\n    access_keys: [{key: k}]\n  - name: b\n    access_keys: [{key: k}]\n";
        assert_eq!(
            Registry::parse(dup).unwrap_err().to_string(),
            "access key `k` is listed twice (tenants `a` and `b`)"
        );
    }

    #[test]
    fn encryption_rate_limits_and_client_certs() {
        let (_, public) = logferry_agent::seal::generate();
        let text = format!(
            "tenants:
  - name: acme
    access_keys:
      - key: ak_web
        client_cert_cn: web-01
    encryption:
      key_id: 3
      public_key: \"{}\"
    rate_limit:
      bytes_per_sec: 1M
      batches_per_sec: 50
",
            public.to_base64()
        );
        let r = Registry::parse(&text).unwrap();
        let c = r.agent_config("acme");
        assert_eq!(c.encryption_key_id, 3);
        assert_eq!(c.encryption_public_key, public.to_bytes());
        assert_eq!(
            r.rate_limit("acme"),
            RateLimit {
                bytes_per_sec: 1 << 20,
                batches_per_sec: 50
            }
        );
        assert_eq!(r.rate_limit("nobody"), RateLimit::default());
        assert_eq!(r.lookup_cert("web-01").unwrap().access_key, "ak_web");
        assert!(r.lookup_cert("web-02").is_none());

        let bad_key = text.replace(&public.to_base64(), "AAAA");
        let err = format!("{:#}", Registry::parse(&bad_key).unwrap_err());
        assert!(
            err.contains("encryption.public_key: the public key must be 32 bytes"),
            "{err}"
        );
        let zero = text.replace("key_id: 3", "key_id: 0");
        let err = format!("{:#}", Registry::parse(&zero).unwrap_err());
        assert!(err.contains("key_id must be 1 or more"), "{err}");
        let twice = text.replace(
            "        client_cert_cn: web-01\n",
            "        client_cert_cn: web-01\n      - key: ak_two\n        client_cert_cn: web-01\n",
        );
        assert_eq!(
            Registry::parse(&twice).unwrap_err().to_string(),
            "client_cert_cn `web-01` is given to access keys `ak_web` and `ak_two`"
        );
    }

    #[test]
    fn destinations_whose_state_would_meet_are_refused() {
        let err = Registry::parse(
            "tenants:\n\
             \x20 - name: a\n    access_keys: [{key: k1}]\n    destinations: [{name: b.c, type: stdout}]\n\
             \x20 - name: a.b\n    access_keys: [{key: k2}]\n    destinations: [{name: c, type: stdout}]\n",
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "destination `c` of tenant `a.b` and destination `b.c` of tenant `a` would share \
             the state `a.b.c` (checkpoint, dead letters, files); rename one"
        );
    }

    #[test]
    fn destination_errors_name_the_tenant_and_destination() {
        let base = "tenants:\n  - name: acme\n    access_keys: [{key: ak}]\n    destinations:\n";
        let err = |dest: &str| {
            format!(
                "{:#}",
                Registry::parse(&format!("{base}{dest}")).unwrap_err()
            )
        };
        assert!(
            Registry::parse(&format!(
                "{base}      - {{name: a, type: file, match: \"app.*\", access_keys: [ak]}}\n"
            ))
            .is_ok()
        );
        assert_eq!(
            err("      - {name: a, type: gcs}\n"),
            "in the destinations of tenant `acme`: destination `a`: type `gcs` is not one of \
             file, stdout, elasticsearch, loki, postgres, s3, kafka"
        );
        assert!(
            Registry::parse(&format!(
                "{base}      - {{name: es, type: elasticsearch, url: \"http://es:9200\", index: x}}\n\
                 \x20     - {{name: l, type: loki, url: \"http://loki\", labels: [level]}}\n\
                 \x20     - {{name: p, type: postgres, url: \"postgresql://db/logs\", table: t_1}}\n"
            ))
            .is_ok()
        );
        assert!(err("      - {name: a, type: s3}\n").ends_with("type `s3` needs `bucket`"));
        assert!(
            err("      - {name: k, type: kafka, topic: t}\n")
                .ends_with("type `kafka` needs `brokers` and `topic`")
        );
        assert!(
            err("      - {name: k, type: kafka, brokers: b, topic: t, key: level}\n")
                .contains("key `level` is not one of agent, tag, tenant, none, record.<field>")
        );
        assert!(
            err("      - {name: k, type: kafka, brokers: b, topic: t, compression: zstd}\n")
                .contains("compression `zstd` is not one of none, gzip, lz4, snappy")
        );
        assert!(
            err("      - {name: a, type: kafka, brokers: b, topic: t}\n      - {name: b, type: kafka, brokers: b, topic: t}\n")
                .contains("destinations `a` and `b` publish to the same Kafka topic")
        );
        assert!(
            Registry::parse(&format!(
                "{base}      - {{name: k, type: kafka, brokers: \"k1:9092,k2:9092\", topic: logs, key: record.level, compression: lz4, properties: {{message.max.bytes: \"2000000\"}}}}\n"
            ))
            .is_ok()
        );
        assert!(
            err("      - {name: a, type: postgres, url: x}\n      - {name: b, type: postgres, url: x}\n")
                .contains("destinations `a` and `b` write the same PostgreSQL table")
        );
        assert!(
            err("      - {name: a, type: file, gzip: true}\n")
                .ends_with("`gzip` compresses closed files; set rotate_bytes or rotate_age")
        );
        assert!(
            err("      - {name: a, type: file, rotate_age: soon}\n").contains("rotate_age `soon`")
        );
        assert!(
            err("      - {name: a, type: stdout, rotate_bytes: 1M}\n")
                .ends_with("`rotate_bytes` does not apply to type `stdout`")
        );
        assert!(
            err("      - {name: a, type: s3, bucket: b, compression: lz4}\n")
                .ends_with("compression `lz4` is not one of zstd, gzip, none")
        );
        assert!(
            err("      - {name: a, type: s3, bucket: b, access_key_id: x}\n")
                .ends_with("`access_key_id` and `secret_access_key_file` go together")
        );
        assert!(
            err("      - {name: a, type: elasticsearch}\n")
                .ends_with("type `elasticsearch` needs `url`")
        );
        assert!(
            err("      - {name: a, type: file, url: \"http://x\"}\n")
                .ends_with("`url` does not apply to type `file`")
        );
        assert!(
            err("      - {name: a, type: postgres, url: x, labels: [a]}\n")
                .ends_with("`labels` does not apply to type `postgres`")
        );
        assert!(
            err("      - {name: a, type: postgres, url: x, table: \"logs; DROP\"}\n")
                .contains("table `logs; DROP` is not [a-z_][a-z0-9_]*")
        );
        assert!(
            err("      - {name: a, type: loki, url: x, max_label_values: 0}\n")
                .ends_with("max_label_values must be at least 1")
        );
        assert!(
            err("      - {name: a, type: file}\n      - {name: a, type: stdout}\n")
                .ends_with("destination `a` is listed twice")
        );
        assert!(
            err("      - {name: a, type: stdout, format: msgpack}\n")
                .contains("format `msgpack` is not one of json, msgpack (file only)")
        );
        assert!(
            err("      - {name: a, type: file, access_keys: [other]}\n")
                .ends_with("access key `other` is not a key of this tenant")
        );
        assert!(err("      - {name: a, type: file, match: \"[\"}\n").contains("match `[`"));
        assert!(err("      - {name: ../x, type: file}\n").contains("destination name `../x`"));
    }

    #[test]
    fn development_registry() {
        let r = Registry::development(None);
        let key = &r.file().tenants[0].access_keys[0].key;
        assert!(key.starts_with("ak_dev_") && key.len() == 7 + 24);
        assert_eq!(r.lookup(key).unwrap().tenant, "dev");
    }
}
