//! One `[OUTPUT]` instance: the agent plus the logger that carries its name.
//!
//! Everything here is safe code; [`crate::ffi`] reads the properties from Fluent Bit,
//! owns the pointer Fluent Bit holds, and calls these methods. The instance is `Sync`:
//! with `Workers N`, Fluent Bit calls [`Instance::flush`] from N threads at once, and
//! the instance warns once that `Workers` crashes Fluent Bit on hot reload
//! ([`crate::workers`]).

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use fluent_bit_sys::{FLB_OK, FLB_RETRY};
use logferry_agent::{ALIASES, Agent, AgentConfig, AgentHooks, FlushOutcome, PROPERTIES};
use tracing::{Dispatch, debug, error, info, trace, warn};

use crate::logging::{self, HostLog, Logger};
use crate::workers::WorkerCheck;

/// How long `FLBPluginExitCtx` lets the agent send what is spooled before it stops.
pub(crate) const EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// Debug builds only: a property that makes the plugin panic on purpose, so tests can
/// check that no panic escapes to the host. Values: `init`, `flush`.
#[cfg(debug_assertions)]
pub(crate) const TEST_PANIC: &str = "_test.panic";

/// The properties of one `[OUTPUT]` section, copied out of Fluent Bit.
#[derive(Debug, Default)]
pub(crate) struct Properties(HashMap<&'static str, String>);

impl Properties {
    /// Reads every property the agent knows with `get` (Fluent Bit's
    /// `output_get_property`); `None` means unset.
    pub(crate) fn read(mut get: impl FnMut(&str) -> Option<String>) -> Self {
        let keys = PROPERTIES
            .iter()
            .map(|property| property.name)
            .chain(ALIASES.iter().map(|(_, alias)| *alias));
        #[cfg(debug_assertions)]
        let keys = keys.chain([TEST_PANIC]);
        Self(keys.filter_map(|key| Some((key, get(key)?))).collect())
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// `Instance::start` failed; the reason has been logged through the host's logger.
#[derive(Debug)]
pub(crate) struct Logged;

/// A running instance. See the module docs.
pub(crate) struct Instance {
    logger: Arc<Logger>,
    dispatch: Dispatch,
    /// `None` once exited. Flushes read-lock it, so exit waits for flushes in flight.
    agent: RwLock<Option<Agent>>,
    /// Whether the last flush found the spool full (to warn once per episode).
    full: AtomicBool,
    /// Warns once when flushes arrive on a worker thread (`Workers` set).
    workers: WorkerCheck,
    #[cfg(debug_assertions)]
    test_panic: Option<String>,
}

impl Instance {
    /// Parses the properties and starts the agent. Logs one line saying why when it
    /// cannot.
    pub(crate) fn start(
        name: String,
        host_log: Box<dyn HostLog>,
        properties: &Properties,
    ) -> Result<Self, Logged> {
        let logger = Arc::new(Logger::new(name, host_log));
        let dispatch = logging::dispatch(logger.clone());
        tracing::dispatcher::with_default(&dispatch, || {
            #[cfg(debug_assertions)]
            let test_panic = properties.get(TEST_PANIC);
            #[cfg(debug_assertions)]
            if test_panic.as_deref() == Some("init") {
                panic!("test hook: panic in init (property `{TEST_PANIC}`)");
            }

            let config = AgentConfig::from_properties(|key| properties.get(key)).map_err(|e| {
                error!("{e}");
                Logged
            })?;
            let endpoint = config.endpoint.to_string();
            let hooks = AgentHooks {
                dispatch: Some(dispatch.clone()),
            };
            let agent = Agent::start(config, hooks).map_err(|e| {
                error!("cannot start: {e}");
                Logged
            })?;
            info!("started; sending to {endpoint}");
            Ok(Self {
                logger: logger.clone(),
                dispatch: dispatch.clone(),
                agent: RwLock::new(Some(agent)),
                full: AtomicBool::new(false),
                workers: WorkerCheck::on_init_thread(),
                #[cfg(debug_assertions)]
                test_panic,
            })
        })
    }

    /// Stores one chunk in the spool: `FLB_OK` once it is durable, `FLB_RETRY` when it
    /// cannot be stored now (Fluent Bit keeps it and tries again).
    pub(crate) fn flush(&self, tag: &str, chunk: &[u8]) -> c_int {
        tracing::dispatcher::with_default(&self.dispatch, || {
            #[cfg(debug_assertions)]
            if self.test_panic.as_deref() == Some("flush") {
                panic!("test hook: panic in flush (property `{TEST_PANIC}`)");
            }
            if let Some(warning) = self.workers.on_flush() {
                warn!("{warning}");
            }
            if chunk.is_empty() {
                debug!(tag, "empty chunk: nothing to store");
                return FLB_OK;
            }
            let agent = self.agent.read().unwrap_or_else(PoisonError::into_inner);
            let Some(agent) = agent.as_ref() else {
                error!(tag, "flush after exit; Fluent Bit will retry the chunk");
                return FLB_RETRY;
            };
            match agent.flush(tag, chunk) {
                FlushOutcome::Stored { seq } => {
                    trace!(seq, tag, bytes = chunk.len(), "chunk spooled");
                    if self.full.swap(false, Ordering::Relaxed) {
                        info!("the spool accepts chunks again");
                    }
                    FLB_OK
                }
                FlushOutcome::Duplicate { seq } => {
                    debug!(seq, tag, bytes = chunk.len(), "chunk already spooled");
                    FLB_OK
                }
                FlushOutcome::Full => {
                    if self.full.swap(true, Ordering::Relaxed) {
                        debug!(
                            tag,
                            bytes = chunk.len(),
                            "spool still full; chunk left to Fluent Bit"
                        );
                    } else {
                        warn!(
                            tag,
                            bytes = chunk.len(),
                            "spool is full (buffer.max_size); Fluent Bit keeps the chunk and \
                             retries until the backend catches up"
                        );
                    }
                    FLB_RETRY
                }
                FlushOutcome::Failed(reason) => {
                    error!(
                        tag,
                        bytes = chunk.len(),
                        "cannot spool chunk: {reason}; Fluent Bit will retry it"
                    );
                    FLB_RETRY
                }
            }
        })
    }

    /// Stops the agent: sends what is spooled for at most `deadline`, joins every
    /// thread it started and detaches from Fluent Bit's logger. Idempotent.
    pub(crate) fn exit(&self, deadline: Duration) -> c_int {
        let rc = tracing::dispatcher::with_default(&self.dispatch, || {
            let agent = self
                .agent
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match agent {
                Some(agent) => {
                    let report = agent.shutdown(deadline);
                    if report.drained {
                        info!("stopped: {report}");
                    } else {
                        warn!("stopped: {report}");
                    }
                    FLB_OK
                }
                None => {
                    debug!("already stopped");
                    FLB_OK
                }
            }
        });
        self.logger.detach();
        rc
    }

    /// Logs `message` as an error through this instance, for the FFI layer.
    pub(crate) fn log_error(&self, message: &str) {
        tracing::dispatcher::with_default(&self.dispatch, || error!("{message}"));
    }
}

#[cfg(test)]
mod tests {
    use fluent_bit_sys::{FLB_LOG_ERROR, FLB_LOG_INFO};

    use super::*;
    use crate::logging::tests::Capture;

    fn properties(pairs: &[(&str, &str)]) -> Properties {
        Properties::read(|key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn a_config_error_is_one_line_naming_the_property() {
        let (sink, lines) = Capture::at(FLB_LOG_INFO);
        let props = properties(&[
            ("access_key", "ak"),
            ("access_token", "t"),
            ("buffer.path", "/tmp/x"),
        ]);
        assert!(Instance::start("logferry.3".into(), sink, &props).is_err());
        assert_eq!(
            *lines.lock().unwrap(),
            vec![(
                FLB_LOG_ERROR,
                "[logferry.3] property `endpoint`: is required: the backend's host:port"
                    .to_string()
            )]
        );
    }

    #[test]
    fn properties_outside_the_table_are_not_read() {
        let mut asked = Vec::new();
        Properties::read(|key| {
            asked.push(key.to_string());
            None
        });
        let expected: Vec<&str> = PROPERTIES
            .iter()
            .map(|p| p.name)
            .chain(ALIASES.iter().map(|(_, alias)| *alias))
            .collect();
        assert_eq!(&asked[..expected.len()], expected.as_slice());
        #[cfg(debug_assertions)]
        assert_eq!(asked[expected.len()..], [TEST_PANIC.to_string()]);
    }
}
