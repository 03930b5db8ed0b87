//! The PostgreSQL sink: rows by `COPY`, the cursor in the same transaction.
//!
//! Table (created with its indexes if missing; `logferry_records` by default):
//!
//! ```sql
//! time timestamptz, tag text, tenant text, agent text, seq bigint, idx integer,
//! record jsonb, metadata jsonb, PRIMARY KEY (tenant, agent, seq, idx)
//! ```
//!
//! Each step is one transaction: `COPY` of its rows, then an upsert of the
//! destination's checkpoint into `logferry_cursors`. Both land or neither does.
//! [`Sink::stored_checkpoint`] reads the checkpoint back, and the router resumes
//! from it, so a step committed just before a crash (or before a lost answer) is
//! never written twice; the primary key would refuse it if it were.
//!
//! A record PostgreSQL cannot hold (`\u0000` in a string, which `jsonb` refuses; a
//! time outside `timestamptz`'s range) goes to the dead letters. A server that is down fails the step, which the
//! destination retries with backoff; the connection is made again each time.
//! Connections are TLS when the server offers it (`sslmode=prefer`, libpq's default) or
//! the URL asks for it (`sslmode=require`), checked against the destination's
//! `ca_file` or Mozilla's roots; `sslmode=disable` keeps them plaintext.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls_pki_types::CertificateDer;
use tracing::info;

use super::{Chunk, Rejected, Sink};
use crate::router::Checkpoint;

/// Where to write.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A libpq-style URL or key=value string, like `postgresql://logferry@db/logs`.
    pub url: String,
    pub password: Option<String>,
    /// `[a-z_][a-z0-9_]*`.
    pub table: String,
    /// The key of this destination's row in `logferry_cursors`.
    pub cursor: String,
    /// The CA certificates a server's certificate is checked against when the
    /// connection is TLS (`sslmode=prefer`, the default, or `require`); `None`:
    /// Mozilla's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url)
            .field("table", &self.table)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    pub const DEFAULT_TABLE: &str = "logferry_records";
}

/// See the module docs.
pub struct PostgresSink {
    config: PostgresConfig,
    client: Option<postgres::Client>,
    /// `COPY` text-format rows of this step.
    rows: Vec<u8>,
    rejected: Vec<Rejected>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("config", &self.config)
            .finish()
    }
}

/// Appends `text` as one field of `COPY ... FROM STDIN` text format.
fn field(out: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

impl PostgresSink {
    pub fn new(config: PostgresConfig) -> Self {
        Self {
            config,
            client: None,
            rows: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// The connection, made (and the schema created) on first use.
    fn client(&mut self) -> Result<&mut postgres::Client> {
        if self.client.is_none() {
            let mut config: postgres::Config = self
                .config
                .url
                .parse()
                .context("the PostgreSQL URL does not parse")?;
            if let Some(password) = &self.config.password {
                config.password(password);
            }
            config.connect_timeout(Duration::from_secs(10));
            config.application_name("logferry");
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(super::tls::client_config(
                self.config.ca.as_deref(),
            )?);
            let mut client = config.connect(tls).context("connecting to PostgreSQL")?;
            let table = &self.config.table;
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (
                        time timestamptz NOT NULL,
                        tag text NOT NULL,
                        tenant text NOT NULL,
                        agent text NOT NULL,
                        seq bigint NOT NULL,
                        idx integer NOT NULL,
                        record jsonb NOT NULL,
                        metadata jsonb NOT NULL,
                        PRIMARY KEY (tenant, agent, seq, idx)
                    );
                    CREATE INDEX IF NOT EXISTS {table}_time ON {table} (time);
                    CREATE INDEX IF NOT EXISTS {table}_tag_time ON {table} (tag, time);
                    CREATE TABLE IF NOT EXISTS logferry_cursors (
                        destination text PRIMARY KEY,
                        checkpoint jsonb NOT NULL,
                        updated_at timestamptz NOT NULL DEFAULT now()
                    );"
                ))
                .with_context(|| format!("creating table `{table}` and `logferry_cursors`"))?;
            info!(table = %table, "connected to PostgreSQL");
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `f` on the connection; drops the connection when it fails, so the next
    /// step connects again.
    fn with_client<T>(&mut self, f: impl FnOnce(&mut postgres::Client) -> Result<T>) -> Result<T> {
        let result = self.client().and_then(f);
        if result.is_err() {
            self.client = None;
        }
        result
    }
}

impl Sink for PostgresSink {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn recover(&mut self, _state: &serde_json::Value) -> Result<()> {
        self.rows.clear();
        self.rejected.clear();
        Ok(())
    }

    fn write(&mut self, chunk: &Chunk<'_>) -> Result<()> {
        for (index, line) in chunk.lines() {
            let value: serde_json::Value =
                serde_json::from_slice(line).context("a rendered record is not JSON")?;
            let record = serde_json::to_string(&value["record"])?;
            let metadata = match &value["metadata"] {
                serde_json::Value::Null => "{}".to_string(),
                m => serde_json::to_string(m)?,
            };
            if record.contains("\\u0000") || metadata.contains("\\u0000") {
                self.rejected.push(Rejected::new(
                    chunk,
                    index,
                    line,
                    "PostgreSQL jsonb cannot hold the character \\u0000",
                ));
                continue;
            }
            // A time PostgreSQL cannot take would fail the whole COPY, every retry.
            let time = value["time"].as_str().unwrap_or_default();
            let Some(time) = chrono::DateTime::parse_from_rfc3339(time)
                .ok()
                .filter(|t| (-4713..=294_276).contains(&chrono::Datelike::year(t)))
                .map(|_| time)
            else {
                self.rejected.push(Rejected::new(
                    chunk,
                    index,
                    line,
                    format!("PostgreSQL timestamptz cannot hold the record's time `{time}`"),
                ));
                continue;
            };
            if i64::try_from(chunk.seq).is_err() {
                self.rejected.push(Rejected::new(
                    chunk,
                    index,
                    line,
                    "the seq does not fit PostgreSQL bigint",
                ));
                continue;
            }
            let row = &mut self.rows;
            for text in [time, chunk.tag, chunk.tenant, chunk.agent] {
                field(row, text);
                row.push(b'\t');
            }
            write!(row, "{}\t{index}\t", chunk.seq)?;
            field(row, &record);
            row.push(b'\t');
            field(row, &metadata);
            row.push(b'\n');
        }
        Ok(())
    }

    fn commit(&mut self, cursor: &Checkpoint) -> Result<serde_json::Value> {
        let rows = std::mem::take(&mut self.rows);
        let checkpoint = serde_json::to_string(cursor)?;
        let (table, key) = (self.config.table.clone(), self.config.cursor.clone());
        self.with_client(|client| {
            let mut tx = client.transaction()?;
            if !rows.is_empty() {
                let mut copy = tx.copy_in(&format!(
                    "COPY {table} (time, tag, tenant, agent, seq, idx, record, metadata) \
                     FROM STDIN"
                ))?;
                copy.write_all(&rows)?;
                copy.finish()
                    .with_context(|| format!("COPY into `{table}`"))?;
            }
            tx.execute(
                "INSERT INTO logferry_cursors (destination, checkpoint) \
                 VALUES ($1, $2::text::jsonb) \
                 ON CONFLICT (destination) \
                 DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = now()",
                &[&key, &checkpoint],
            )
            .context("storing the cursor")?;
            tx.commit().context("committing")?;
            Ok(())
        })
        .context("PostgreSQL")?;
        Ok(serde_json::Value::Null)
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    fn stores_checkpoint(&self) -> bool {
        true
    }

    fn stored_checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let key = self.config.cursor.clone();
        let text: Option<String> = self
            .with_client(|client| {
                Ok(client
                    .query_opt(
                        "SELECT checkpoint::text FROM logferry_cursors WHERE destination = $1",
                        &[&key],
                    )?
                    .map(|row| row.get(0)))
            })
            .context("PostgreSQL: reading the stored cursor")?;
        text.map(|t| {
            serde_json::from_str(&t)
                .with_context(|| format!("the cursor of `{key}` in logferry_cursors is corrupt"))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn copy_fields_escape_backslashes_and_separators() {
        let mut out = Vec::new();
        field(&mut out, "{\"a\":\"b\\\"c\"}\t\n\r");
        assert_eq!(out, b"{\"a\":\"b\\\\\"c\"}\\t\\n\\r");
    }
}
