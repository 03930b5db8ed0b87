//! The S3-compatible object storage sink (the `object_store` crate).
//!
//! Each step of the destination becomes one object of NDJSON (zstd, gzip or plain):
//!
//! ```text
//! <prefix>/dt=<YYYY-MM-DD>/<first buffer offset, 20 digits>-<next offset, 20 digits>.ndjson.zst
//! ```
//!
//! `prefix` is `<configured prefix>/<tenant>/<destination>` (plus `.p<N>` for a Kafka
//! partition), so the key says whose records it holds, when they were stored and which
//! buffer range they came from. The destination steps at most every `batch_max_age`
//! (and each step reads at most 16 MiB of the buffer), so objects are batched by time
//! and size.
//!
//! Exactly once, by the sink's own means:
//! - after the data object, the sink writes the destination's checkpoint next to the
//!   objects (`<prefix>/_checkpoint.json`); [`Sink::stored_checkpoint`] hands it back,
//!   so it wins over an older local checkpoint file;
//! - before it writes again after a start or a failed step, the sink deletes every
//!   object whose first offset is at or past the checkpoint's `next_offset`: objects of
//!   a step that never reached a checkpoint. The step is then written again.
//! - records sent again by `logferry dead-letter replay` go to
//!   `dt=<date>/replay-<N, 20 digits>.ndjson.zst`, N being the number of dead letters
//!   replayed once it is checkpointed; a replay object past the checkpoint's count is
//!   deleted in the same way.
//!
//! Object storage that is down fails the step, which the destination retries with
//! backoff; `object_store` itself retries each request a few times first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use tracing::{info, warn};

use super::{Chunk, Sink};
use crate::router::Checkpoint;

/// How objects are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ObjectCompression {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl ObjectCompression {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "zstd" => Some(Self::Zstd),
            "gzip" => Some(Self::Gzip),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Zstd => ".ndjson.zst",
            Self::Gzip => ".ndjson.gz",
            Self::None => ".ndjson",
        }
    }

    fn compress(self, data: &[u8]) -> Result<Vec<u8>> {
        use std::io::Write;
        Ok(match self {
            Self::Zstd => zstd::bulk::compress(data, 3)?,
            Self::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(data)?;
                encoder.finish()?
            }
            Self::None => data.to_vec(),
        })
    }
}

/// Where and how to store.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `None`: AWS itself; otherwise an S3-compatible endpoint like `http://minio:9000`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// The full key prefix of this destination: `<prefix>/<tenant>/<destination>`.
    pub prefix: String,
    /// Both `None`: the `AWS_*` environment (keys, web identity, instance profile).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub compression: ObjectCompression,
    /// The least time between two objects.
    pub batch_max_age: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    pub const DEFAULT_BATCH_MAX_AGE: Duration = Duration::from_secs(10);
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs futures on a runtime of its own, on its own thread, and blocks for their
/// results: the router's steps are blocking code, on a Tokio blocking thread or a
/// plain one, and a runtime must neither be entered nor dropped there.
struct Executor {
    jobs: mpsc::Sender<Job>,
}

impl Executor {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the S3 sink's runtime")?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("s3-sink".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    runtime.block_on(job);
                }
            })
            .context("starting the S3 sink's thread")?;
        Ok(Self { jobs })
    }

    fn block<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::pin(async move {
                let _ = tx.send(future.await);
            }))
            .map_err(|_| anyhow::anyhow!("the S3 sink's thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the S3 sink's thread is gone"))
    }
}

/// See the module docs.
pub struct S3Sink {
    config: S3Config,
    store: Arc<dyn ObjectStore>,
    executor: Executor,
    /// NDJSON of this step.
    body: Vec<u8>,
    first_offset: Option<u64>,
    /// Objects at or past this buffer offset, and replay objects past this count,
    /// were never checkpointed; `Some` until they are deleted.
    clean_from: Option<(u64, u64)>,
    /// Dead letters replayed, as of the last checkpoint.
    replayed: u64,
}

impl std::fmt::Debug for S3Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Sink")
            .field("config", &self.config)
            .finish()
    }
}

/// The replay count in the name of a replay object.
fn replay_count_of(name: &str) -> Option<u64> {
    let (count, extension) = name.strip_prefix("replay-")?.split_once('.')?;
    (count.len() == 20 && extension.starts_with("ndjson"))
        .then(|| count.parse().ok())
        .flatten()
}

/// The first buffer offset in an object's name, if it is one of ours.
fn first_offset_of(name: &str) -> Option<u64> {
    let (first, rest) = name.split_once('-')?;
    let (_next, extension) = rest.split_once('.')?;
    (first.len() == 20 && extension.starts_with("ndjson"))
        .then(|| first.parse().ok())
        .flatten()
}

impl S3Sink {
    pub fn new(config: S3Config) -> Result<Self> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_connect_timeout(Duration::from_secs(5)),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder.build().context("configuring the S3 client")?;
        Ok(Self {
            config,
            store: Arc::new(store),
            executor: Executor::new()?,
            body: Vec::new(),
            first_offset: None,
            clean_from: Some((0, 0)),
            replayed: 0,
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{name}", self.config.prefix))
    }

    /// Deletes the objects of steps that never reached a checkpoint.
    fn clean(&mut self) -> Result<()> {
        let Some((from, replayed)) = self.clean_from else {
            return Ok(());
        };
        let store = self.store.clone();
        let prefix = ObjectPath::from(self.config.prefix.as_str());
        let listed: Vec<_> = self
            .executor
            .block(async move { store.list(Some(&prefix)).try_collect::<Vec<_>>().await })?
            .with_context(|| format!("listing `{}`", self.config.prefix))?;
        for object in listed {
            let Some(name) = object.location.filename() else {
                continue;
            };
            if first_offset_of(name).is_some_and(|first| first >= from)
                || replay_count_of(name).is_some_and(|count| count > replayed)
            {
                warn!(
                    object = %object.location,
                    "deleting an object written after the last checkpoint; its records are \
                     written again"
                );
                let store = self.store.clone();
                let location = object.location.clone();
                self.executor
                    .block(async move { store.delete(&location).await })?
                    .with_context(|| format!("deleting `{}`", object.location))?;
            }
        }
        self.clean_from = None;
        Ok(())
    }

    fn put(&self, path: ObjectPath, bytes: Vec<u8>) -> Result<()> {
        let store = self.store.clone();
        let shown = path.to_string();
        self.executor
            .block(async move { store.put(&path, PutPayload::from(bytes)).await })?
            .with_context(|| format!("writing `{shown}`"))?;
        Ok(())
    }
}

impl Sink for S3Sink {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn recover(&mut self, state: &serde_json::Value) -> Result<()> {
        self.body.clear();
        self.first_offset = None;
        // Cleaned lazily: object storage may be down while the router starts.
        self.replayed = state["replayed"].as_u64().unwrap_or(0);
        self.clean_from = Some((state["next_offset"].as_u64().unwrap_or(0), self.replayed));
        Ok(())
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        self.first_offset.get_or_insert(chunk.offset);
        self.body.extend_from_slice(chunk.data);
        Ok(())
    }

    fn commit(&mut self, cursor: &Checkpoint) -> Result<serde_json::Value> {
        self.clean()?;
        let replayed = cursor.replayed.len() as u64;
        let state = serde_json::json!({ "next_offset": cursor.next_offset, "replayed": replayed });
        let date = chrono::Utc::now().format("%Y-%m-%d");
        let extension = self.config.compression.extension();
        if let Some(first) = self.first_offset.take() {
            let name = if replayed > self.replayed {
                // A replay step: records from before the cursor, which stays.
                format!("dt={date}/replay-{replayed:020}{extension}")
            } else if first >= cursor.next_offset {
                bail!(
                    "a step from offset {first} cannot end at {}",
                    cursor.next_offset
                );
            } else {
                format!(
                    "dt={date}/{first:020}-{:020}{extension}",
                    cursor.next_offset
                )
            };
            let object = self.config.compression.compress(&self.body)?;
            self.body.clear();
            self.put(self.path(&name), object)?;
        }
        let stored = Checkpoint {
            sink: state.clone(),
            ..cursor.clone()
        };
        self.put(self.path("_checkpoint.json"), serde_json::to_vec(&stored)?)?;
        self.replayed = replayed;
        Ok(state)
    }

    fn stores_checkpoint(&self) -> bool {
        true
    }

    fn stored_checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let store = self.store.clone();
        let path = self.path("_checkpoint.json");
        let got = self.executor.block(async move {
            match store.get(&path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some(bytes) = got.context("reading the stored checkpoint")? else {
            return Ok(None);
        };
        let stored: Checkpoint = serde_json::from_slice(&bytes)
            .with_context(|| format!("`{}/_checkpoint.json` is corrupt", self.config.prefix))?;
        if self.clean_from.is_some() {
            self.replayed = stored.replayed.len() as u64;
            self.clean_from = Some((stored.next_offset, self.replayed));
        }
        info!(prefix = %self.config.prefix, "stored checkpoint at offset {}", stored.next_offset);
        Ok(Some(stored))
    }

    fn step_interval(&self) -> Duration {
        self.config.batch_max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_carry_the_first_offset() {
        assert_eq!(
            first_offset_of("00000000000000000042-00000000000000000050.ndjson.zst"),
            Some(42)
        );
        assert_eq!(first_offset_of("_checkpoint.json"), None);
        assert_eq!(first_offset_of("42-50.ndjson"), None);
        assert_eq!(
            first_offset_of("replay-00000000000000000003.ndjson.zst"),
            None
        );
        assert_eq!(
            replay_count_of("replay-00000000000000000003.ndjson.zst"),
            Some(3)
        );
        assert_eq!(
            replay_count_of("00000000000000000042-00000000000000000050.ndjson.zst"),
            None
        );
    }

    #[test]
    fn compression_round_trips() {
        let data = b"{\"a\":1}\n".repeat(100);
        let zstd = ObjectCompression::Zstd.compress(&data).unwrap();
        assert_eq!(zstd::decode_all(&zstd[..]).unwrap(), data);
        let gzip = ObjectCompression::Gzip.compress(&data).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzip[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }
}
