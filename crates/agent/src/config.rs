//! Agent settings, read from Fluent Bit `[OUTPUT]` properties (or `logferry send`
//! flags, which use the same names).
//!
//! Every property is listed in [`PROPERTIES`] with its default; that table is the
//! reference the README and the config-file validator use. Sizes read like `512K`
//! and `1G` (binary units), durations like `200ms` or `5s`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use logferry_proto::v1::Compression;

/// One documented property.
#[derive(Debug, Clone, Copy)]
pub struct Property {
    pub name: &'static str,
    /// `None`: required (or one of a required pair).
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// Every property the agent understands, in the order the README documents them.
pub const PROPERTIES: &[Property] = &[
    Property {
        name: "endpoint",
        default: None,
        help: "backend address: `host:port` or `https://host:port`; `http://host:port` \
               sends in plaintext and is meant for loopback development only. Several, \
               separated by commas, are used in turn: after a session fails the agent \
               moves to the next. Meant for the `logferry ingest` replicas of one Kafka \
               deployment (the routers drop what is sent twice); separate `serve` \
               backends keep separate dedup marks, and a batch re-sent to another one is \
               stored there again",
    },
    Property {
        name: "access_key",
        default: None,
        help: "the access key of this agent configuration, as listed in the tenant registry",
    },
    Property {
        name: "access_token",
        default: Some("none"),
        help: "the token bound to the access key; give this or `access_token_file` (or, \
               with a backend that maps client certificates to keys, `tls.crt_file`)",
    },
    Property {
        name: "access_token_file",
        default: Some("none"),
        help: "a file holding the token; re-read before every reconnect, so rotation \
               needs no restart",
    },
    Property {
        name: "tls.ca_file",
        default: Some("system roots"),
        help: "PEM file of the CA(s) that sign the backend's certificate",
    },
    Property {
        name: "tls.crt_file",
        default: Some("none"),
        help: "PEM client certificate, for mutual TLS",
    },
    Property {
        name: "tls.key_file",
        default: Some("none"),
        help: "PEM private key of `tls.crt_file`",
    },
    Property {
        name: "tls.verify",
        default: Some("on"),
        help: "verify the backend's certificate (`on`/`off`); `off` is for tests only",
    },
    Property {
        name: "tls.server_name",
        default: Some("the endpoint's host"),
        help: "name expected in the backend's certificate",
    },
    Property {
        name: "buffer.path",
        default: None,
        help: "directory of this instance's disk spool; one directory per [OUTPUT]",
    },
    Property {
        name: "buffer.max_size",
        default: Some("1G"),
        help: "spool size cap; a full spool answers FLB_RETRY and Fluent Bit keeps the chunk",
    },
    Property {
        name: "buffer.sync",
        default: Some("on"),
        help: "fsync each flush before answering FLB_OK (group commit); `off` trusts the \
               page cache",
    },
    Property {
        name: "batch.max_bytes",
        default: Some("4M"),
        help: "largest batch of whole chunks per gRPC message (a bigger chunk goes alone)",
    },
    Property {
        name: "batch.max_delay",
        default: Some("50ms"),
        help: "how long a partly filled batch waits for more chunks",
    },
    Property {
        name: "compress",
        default: Some("zstd"),
        help: "`zstd` or `none`",
    },
    Property {
        name: "metrics.listen",
        default: Some("off"),
        help: "`host:port` of an HTTP listener serving this instance's Prometheus metrics \
               at `/metrics` (port 0 picks a free one, logged at start); `off` for none",
    },
];

/// A property that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub property: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "property `{}`: {}", self.property, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(property: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        property,
        message: message.into(),
    }
}

/// Where the backend is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// False only when the operator wrote `http://` explicitly.
    pub tls: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `host:port`, `https://host:port` or `http://host:port` (IPv6 in brackets).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        let (tls, rest) = if let Some(rest) = value.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = value.strip_prefix("http://") {
            (false, rest)
        } else if value.contains("://") {
            return Err(format!(
                "`{value}` has an unknown scheme; use https:// or http://"
            ));
        } else {
            (true, value)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, port) = bracketed
                .split_once("]:")
                .ok_or_else(|| format!("`{value}` is not `[ipv6]:port`"))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| format!("`{value}` has no port; expected host:port"))?
        };
        if host.is_empty() {
            return Err(format!("`{value}` has no host; expected host:port"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{port}` is not a port number"))?;
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Inline(String),
    /// Re-read before every (re)connect.
    File(PathBuf),
}

impl TokenSource {
    /// The current token, trimmed.
    pub fn load(&self) -> std::io::Result<String> {
        match self {
            TokenSource::Inline(token) => Ok(token.clone()),
            TokenSource::File(path) => Ok(std::fs::read_to_string(path)?.trim().to_string()),
        }
    }
}

/// TLS client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub crt_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify: bool,
    pub server_name: Option<String>,
}

/// Everything the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub endpoint: Endpoint,
    /// Further endpoints of `endpoint = a,b,...`, tried in turn after `endpoint`.
    pub fallback_endpoints: Vec<Endpoint>,
    pub access_key: String,
    pub token: TokenSource,
    pub tls: TlsSettings,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub spool_sync: bool,
    pub batch_max_bytes: u64,
    pub batch_max_delay: Duration,
    pub compression: Compression,
    /// Set explicitly in properties; otherwise config exchange may change them.
    pub explicit: ExplicitSettings,
    /// How long to wait for TCP + TLS + the backend's welcome. Default 5 s.
    pub connect_timeout: Duration,
    /// A batch unacked for this long marks the stream dead. Default 15 s.
    pub ack_timeout: Duration,
    /// Batches in flight on one stream. Default 8.
    pub window: usize,
    /// Shown to operators in the backend's logs.
    pub agent_version: String,
    /// Where to serve this instance's metrics; `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Which tunables the operator set locally (local settings win over config exchange).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExplicitSettings {
    pub batch_max_bytes: bool,
    pub batch_max_delay: bool,
    pub compression: bool,
}

fn parse_bool(property: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(invalid(
            property,
            format!("expected on or off, got `{other}`"),
        )),
    }
}

/// Parses `512K`, `4M`, `1G`, `1048576` (binary multiples).
pub fn parse_size(property: &'static str, value: &str) -> Result<u64, ConfigError> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(value.trim())
        .map_err(|e| {
            invalid(
                property,
                format!("expected a size like 512K or 1G, got `{value}` ({e})"),
            )
        })
}

/// Parses `200ms`, `5s`, `1m`.
pub fn parse_duration(property: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            property,
            format!("expected a duration like 200ms or 5s, got `{value}` ({e})"),
        )
    })
}

fn parse_compression(property: &'static str, value: &str) -> Result<Compression, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "zstd" => Ok(Compression::Zstd),
        "none" | "off" => Ok(Compression::None),
        other => Err(invalid(
            property,
            format!("expected zstd or none, got `{other}`"),
        )),
    }
}

/// Other names for properties Fluent Bit keeps to itself: it claims `tls.ca_file`,
/// `tls.crt_file`, `tls.key_file` and `tls.verify` as settings of its own TLS layer and
/// never hands them to a proxy plugin. In a Fluent Bit config the second name must be
/// used; the first still works where the host passes it (`logferry send`, tests).
pub const ALIASES: &[(&str, &str)] = &[
    ("tls.ca_file", "tls_ca_file"),
    ("tls.crt_file", "tls_crt_file"),
    ("tls.key_file", "tls_key_file"),
    ("tls.verify", "tls_verify"),
    ("tls.server_name", "tls_server_name"),
];

/// The alias of property `name`, if it has one.
pub fn alias_of(name: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(property, _)| *property == name)
        .map(|(_, alias)| *alias)
}

impl AgentConfig {
    /// `endpoint`, then the fallbacks.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        std::iter::once(&self.endpoint).chain(&self.fallback_endpoints)
    }

    /// Builds the config from properties. `get` returns a property's value, or `None`
    /// when it is not set (Fluent Bit's `output_get_property`). Keys are the names in
    /// [`PROPERTIES`]. An empty value counts as unset.
    pub fn from_properties(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read_properties(&get).map_err(|mut e| {
            // Name the property the way the user wrote it.
            let set = |key: &str| get(key).is_some_and(|v| !v.trim().is_empty());
            if let Some(alias) = alias_of(e.property).filter(|a| set(a) && !set(e.property)) {
                e.property = alias;
            }
            e
        })
    }

    fn read_properties(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            let set = |key: &str| get(key).filter(|v| !v.trim().is_empty());
            set(name).or_else(|| alias_of(name).and_then(set))
        };

        let endpoint = get("endpoint")
            .ok_or_else(|| invalid("endpoint", "is required: the backend's host:port"))?;
        let mut endpoints = endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| Endpoint::parse(e).map_err(|e| invalid("endpoint", e)));
        let endpoint = endpoints
            .next()
            .ok_or_else(|| invalid("endpoint", "is required: the backend's host:port"))??;
        let fallback_endpoints = endpoints.collect::<Result<Vec<_>, _>>()?;

        let access_key = get("access_key")
            .ok_or_else(|| invalid("access_key", "is required: the agent's access key"))?
            .trim()
            .to_string();

        let token = match (get("access_token"), get("access_token_file")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "access_token",
                    "set either access_token or access_token_file, not both",
                ));
            }
            (Some(token), None) => TokenSource::Inline(token.trim().to_string()),
            (None, Some(file)) => {
                let path = PathBuf::from(file.trim());
                let source = TokenSource::File(path.clone());
                source.load().map_err(|e| {
                    invalid(
                        "access_token_file",
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                })?;
                source
            }
            // With a client certificate (mutual TLS) the certificate may stand in for
            // the token, if the backend maps it to this access key.
            (None, None) if get("tls.crt_file").is_some() => TokenSource::Inline(String::new()),
            (None, None) => {
                return Err(invalid(
                    "access_token",
                    "is required: set access_token or access_token_file (or tls_crt_file \
                     and tls_key_file, for a backend that maps client certificates to keys)",
                ));
            }
        };

        let file_prop = |name: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            match get(name) {
                None => Ok(None),
                Some(v) => {
                    let path = PathBuf::from(v.trim());
                    if !path.is_file() {
                        return Err(invalid(
                            name,
                            format!("`{}` is not a readable file", path.display()),
                        ));
                    }
                    Ok(Some(path))
                }
            }
        };
        let tls = TlsSettings {
            ca_file: file_prop("tls.ca_file")?,
            crt_file: file_prop("tls.crt_file")?,
            key_file: file_prop("tls.key_file")?,
            verify: get("tls.verify")
                .map(|v| parse_bool("tls.verify", &v))
                .transpose()?
                .unwrap_or(true),
            server_name: get("tls.server_name").map(|v| v.trim().to_string()),
        };
        if tls.crt_file.is_some() != tls.key_file.is_some() {
            return Err(invalid(
                "tls.key_file",
                "tls.crt_file and tls.key_file go together",
            ));
        }

        let spool_dir = get("buffer.path").ok_or_else(|| {
            invalid(
                "buffer.path",
                "is required: a directory for this instance's disk spool",
            )
        })?;
        let spool_max_bytes = get("buffer.max_size")
            .map(|v| parse_size("buffer.max_size", &v))
            .transpose()?
            .unwrap_or(1 << 30);
        if spool_max_bytes < 1 << 20 {
            return Err(invalid("buffer.max_size", "must be at least 1M"));
        }
        let spool_sync = get("buffer.sync")
            .map(|v| parse_bool("buffer.sync", &v))
            .transpose()?
            .unwrap_or(true);

        let batch_max_bytes_set = get("batch.max_bytes");
        let batch_max_bytes = batch_max_bytes_set
            .as_deref()
            .map(|v| parse_size("batch.max_bytes", v))
            .transpose()?
            .unwrap_or(4 << 20);
        if !(1024..=(48 << 20)).contains(&batch_max_bytes) {
            return Err(invalid("batch.max_bytes", "must be between 1K and 48M"));
        }
        let batch_max_delay_set = get("batch.max_delay");
        let batch_max_delay = batch_max_delay_set
            .as_deref()
            .map(|v| parse_duration("batch.max_delay", v))
            .transpose()?
            .unwrap_or(Duration::from_millis(50));
        let compression_set = get("compress");
        let compression = compression_set
            .as_deref()
            .map(|v| parse_compression("compress", v))
            .transpose()?
            .unwrap_or(Compression::Zstd);

        let metrics_listen = match get("metrics.listen").as_deref().map(str::trim) {
            None | Some("off") => None,
            Some(addr) => Some(addr.parse().map_err(|e| {
                invalid(
                    "metrics.listen",
                    format!("expected host:port (like 127.0.0.1:2021) or off, got `{addr}`: {e}"),
                )
            })?),
        };

        Ok(Self {
            metrics_listen,
            endpoint,
            fallback_endpoints,
            access_key,
            token,
            tls,
            spool_dir: PathBuf::from(spool_dir.trim()),
            spool_max_bytes,
            spool_sync,
            batch_max_bytes,
            batch_max_delay,
            compression,
            explicit: ExplicitSettings {
                batch_max_bytes: batch_max_bytes_set.is_some(),
                batch_max_delay: batch_max_delay_set.is_some(),
                compression: compression_set.is_some(),
            },
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(15),
            window: 8,
            agent_version: concat!("logferry-agent/", env!("CARGO_PKG_VERSION")).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn props(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        move |k| map.get(&k.to_ascii_lowercase()).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        ("endpoint", "127.0.0.1:7777"),
        ("access_key", "ak_test"),
        ("access_token", "tok"),
        ("buffer.path", "/tmp/spool"),
    ];

    #[test]
    fn defaults() {
        let c = AgentConfig::from_properties(props(BASE)).unwrap();
        assert_eq!(
            c.endpoint,
            Endpoint {
                host: "127.0.0.1".into(),
                port: 7777,
                tls: true
            }
        );
        assert_eq!(c.spool_max_bytes, 1 << 30);
        assert!(c.spool_sync);
        assert_eq!(c.batch_max_bytes, 4 << 20);
        assert_eq!(c.batch_max_delay, Duration::from_millis(50));
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.explicit, ExplicitSettings::default());
    }

    #[test]
    fn tls_settings_read_under_the_names_fluent_bit_passes_on() {
        let mut p = BASE.to_vec();
        p.extend([
            ("tls_verify", "off"),
            ("tls_server_name", "backend.internal"),
        ]);
        let c = AgentConfig::from_properties(props(&p)).unwrap();
        assert!(!c.tls.verify);
        assert_eq!(c.tls.server_name.as_deref(), Some("backend.internal"));
        // The dotted name wins where the host passes both.
        p.push(("tls.verify", "on"));
        assert!(AgentConfig::from_properties(props(&p)).unwrap().tls.verify);
        // An error names the spelling that was used.
        let mut p = BASE.to_vec();
        p.push(("tls_verify", "maybe"));
        assert_eq!(
            AgentConfig::from_properties(props(&p))
                .unwrap_err()
                .to_string(),
            "property `tls_verify`: expected on or off, got `maybe`"
        );
    }

    #[test]
    fn human_sizes_and_durations() {
        let mut p = BASE.to_vec();
        p.extend([
            ("buffer.max_size", "512M"),
            ("batch.max_bytes", "512K"),
            ("batch.max_delay", "200ms"),
        ]);
        p.extend([("compress", "none"), ("buffer.sync", "off")]);
        let c = AgentConfig::from_properties(props(&p)).unwrap();
        assert_eq!(c.spool_max_bytes, 512 << 20);
        assert_eq!(c.batch_max_bytes, 512 << 10);
        assert_eq!(c.batch_max_delay, Duration::from_millis(200));
        assert_eq!(c.compression, Compression::None);
        assert!(!c.spool_sync);
        assert!(c.explicit.batch_max_bytes && c.explicit.compression && c.explicit.batch_max_delay);
    }

    #[test]
    fn errors_name_the_property() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "endpoint",
                "nohost",
                "property `endpoint`: `nohost` has no port; expected host:port",
            ),
            (
                "endpoint",
                "ftp://x:1",
                "property `endpoint`: `ftp://x:1` has an unknown scheme; use https:// or http://",
            ),
            (
                "buffer.sync",
                "maybe",
                "property `buffer.sync`: expected on or off, got `maybe`",
            ),
            (
                "compress",
                "gzip",
                "property `compress`: expected zstd or none, got `gzip`",
            ),
            (
                "tls.ca_file",
                "/nonexistent/ca.pem",
                "property `tls.ca_file`: `/nonexistent/ca.pem` is not a readable file",
            ),
        ];
        for (key, value, expected) in cases {
            let mut p: Vec<(&str, &str)> = BASE.iter().filter(|(k, _)| k != key).copied().collect();
            p.push((key, value));
            let err = AgentConfig::from_properties(props(&p)).unwrap_err();
            assert_eq!(err.to_string(), *expected);
        }
        let err = AgentConfig::from_properties(props(&BASE[1..])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "property `endpoint`: is required: the backend's host:port"
        );
        let mut p = BASE.to_vec();
        p.push(("batch.max_bytes", "lots"));
        let err = AgentConfig::from_properties(props(&p)).unwrap_err();
        assert_eq!(err.property, "batch.max_bytes");
        assert!(
            err.message
                .starts_with("expected a size like 512K or 1G, got `lots`"),
            "{err}"
        );
    }

    #[test]
    fn several_endpoints_are_used_in_turn() {
        let props = [
            ("endpoint", "a:1, https://b:2 ,"),
            ("access_key", "ak"),
            ("access_token", "t"),
            ("buffer.path", "/tmp/x"),
        ];
        let get = |k: &str| {
            props
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let config = AgentConfig::from_properties(get).unwrap();
        assert_eq!(config.endpoint.to_string(), "https://a:1");
        assert_eq!(
            config
                .fallback_endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["https://b:2"]
        );
        assert_eq!(config.endpoints().count(), 2);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://[::1]:80").unwrap(),
            Endpoint {
                host: "::1".into(),
                port: 80,
                tls: false
            }
        );
        assert_eq!(
            Endpoint::parse("https://logs.example:443/")
                .unwrap()
                .to_string(),
            "https://logs.example:443"
        );
    }
}
