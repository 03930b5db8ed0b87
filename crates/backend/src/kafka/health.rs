//! What a Kafka client reports outside any one request: a refused login, every broker
//! down. librdkafka retries both by itself, many times a second, and says so each
//! time (its error callback and its log lines); [`ClientHealth`] turns that into one
//! log line when the trouble starts or changes, a reminder at most once a minute
//! while it lasts, and one line when it is over. It also remembers the trouble, so a
//! produce that times out because of it is refused with the real reason (`Kafka
//! refused the ingester's credentials: ...`) instead of `Message timed out`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{error, info, warn};

/// How often a trouble that goes on, or one kind of librdkafka log line, is logged.
const REMIND: Duration = Duration::from_secs(60);
/// How long a librdkafka log line of one facility is quiet after it was printed.
const QUIET: Duration = Duration::from_secs(30);

/// A trouble of the whole client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TroubleKind {
    /// The brokers refused the client's credentials (SASL).
    Authentication,
    /// No broker can be reached (down, or its name does not resolve).
    Unreachable,
}

/// The last trouble reported, with librdkafka's words.
#[derive(Debug, Clone)]
pub struct Trouble {
    pub kind: TroubleKind,
    pub detail: String,
    /// When it was last reported.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    trouble: Option<Trouble>,
    /// When the current trouble was last logged.
    logged: Option<Instant>,
    /// The last librdkafka log line at error level: the detail for an error that
    /// comes without one (a consumer's error events).
    last_error_line: Option<String>,
    /// librdkafka log lines by facility and level: when one was last printed, and how
    /// many were held back since.
    lines: HashMap<String, (Instant, u64)>,
}

/// The health of one Kafka client (see the module documentation).
#[derive(Debug)]
pub struct ClientHealth {
    /// Who the client is, for log lines: `ingester`, `router`, `kafka sink`.
    role: String,
    /// Where its settings are, for a refused login.
    settings: &'static str,
    state: Mutex<State>,
}

/// Where the settings of `ingest` and `route` are.
pub const ROLE_SETTINGS: &str = "`--kafka-property`, `--kafka-properties-file`";

impl ClientHealth {
    /// The health of the client of `role`, whose settings are where `settings` says.
    pub fn new(role: impl Into<String>, settings: &'static str) -> Arc<Self> {
        Arc::new(Self {
            role: role.into(),
            settings,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an error librdkafka reported. A refused login, every broker down, or a
    /// broker name that does not resolve is logged when it starts or changes kind,
    /// and at most once a minute while it lasts. A failed connection is remembered
    /// (it explains a produce that times out) but logged like a librdkafka log line,
    /// as is any other error: at most once per 30 s for each kind.
    pub fn report(&self, error: &KafkaError, detail: &str) {
        let code = error.rdkafka_error_code();
        let (kind, quiet) = match code {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                (TroubleKind::Authentication, false)
            }
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::Resolve) => {
                (TroubleKind::Unreachable, false)
            }
            // Also an idle connection the broker closed: not worth a line of its own.
            Some(RDKafkaErrorCode::BrokerTransportFailure) => (TroubleKind::Unreachable, true),
            _ => {
                self.emit(
                    format!("error {code:?}"),
                    RDKafkaLogLevel::Warning,
                    format!("{error}: {detail}"),
                );
                return;
            }
        };
        let mut state = self.state();
        // A consumer's error events carry no text: librdkafka's log line has it.
        let detail = if detail.is_empty() {
            state
                .last_error_line
                .clone()
                .unwrap_or_else(|| error.to_string())
        } else {
            detail.to_string()
        };
        // A refused login drops the connection and downs the broker too: that is
        // still the login's fault.
        let login_refused = state
            .trouble
            .as_ref()
            .is_some_and(|t| t.kind == TroubleKind::Authentication && t.at.elapsed() < REMIND);
        if kind == TroubleKind::Unreachable && login_refused {
            return;
        }
        let now = Instant::now();
        let changed = state.trouble.as_ref().is_none_or(|t| t.kind != kind);
        let due = state.logged.is_none_or(|at| at.elapsed() >= REMIND);
        state.trouble = Some(Trouble {
            kind,
            detail: detail.clone(),
            at: now,
        });
        if quiet {
            drop(state);
            self.emit(
                format!("error {code:?}"),
                RDKafkaLogLevel::Warning,
                format!("{error}: {detail}"),
            );
            return;
        }
        if !(changed || due) {
            return;
        }
        state.logged = Some(now);
        drop(state);
        let (role, settings) = (&self.role, self.settings);
        match kind {
            TroubleKind::Authentication => error!(
                "Kafka refused the {role}'s credentials: {detail}; check security.protocol, \
                 sasl.mechanism, sasl.username and sasl.password ({settings}); retrying"
            ),
            TroubleKind::Unreachable => {
                warn!("the {role} cannot reach Kafka: {detail}; retrying")
            }
        }
    }

    /// Notes that a request went through: a trouble noted before is over.
    pub fn ok(&self) {
        let mut state = self.state();
        let Some(trouble) = state.trouble.take() else {
            return;
        };
        // Said to be over only if it was said to start.
        if state.logged.take().is_some() {
            drop(state);
            let what = match trouble.kind {
                TroubleKind::Authentication => "is logged in to Kafka again",
                TroubleKind::Unreachable => "reaches Kafka again",
            };
            info!("the {} {what}", self.role);
        }
    }

    /// `what` went wrong; with the trouble of the last minute that explains it, if any.
    pub fn explain(&self, what: impl std::fmt::Display) -> String {
        match self.recent(REMIND) {
            Some(t) if t.kind == TroubleKind::Authentication => format!(
                "{what} (Kafka refused the {}'s credentials: {})",
                self.role, t.detail
            ),
            Some(t) => format!(
                "{what} (the {} cannot reach Kafka: {})",
                self.role, t.detail
            ),
            None => what.to_string(),
        }
    }

    /// The trouble reported within the last `window`, if any.
    pub fn recent(&self, window: Duration) -> Option<Trouble> {
        self.state()
            .trouble
            .clone()
            .filter(|t| t.at.elapsed() <= window)
    }

    /// Logs a librdkafka line unless one of the same facility and level was printed
    /// within the last 30 s; a line printed after a quiet spell says how many it held
    /// back.
    pub fn line(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) {
            self.state().last_error_line = Some(message.to_string());
        }
        // An error line is not held back by a quieter line of its facility.
        self.emit(
            format!("{facility} {level:?}"),
            level,
            format!("{facility} {message}"),
        );
    }

    /// Logs `text` unless a line of the same `key` was printed within the last 30 s.
    fn emit(&self, key: String, level: RDKafkaLogLevel, text: String) {
        let mut state = self.state();
        let now = Instant::now();
        let held = match state.lines.get_mut(&key) {
            Some((at, held)) if at.elapsed() < QUIET => {
                *held += 1;
                return;
            }
            Some((at, held)) => {
                *at = now;
                std::mem::take(held)
            }
            None => {
                state.lines.insert(key, (now, 0));
                0
            }
        };
        drop(state);
        let more = if held > 0 {
            format!(" ({held} more like it held back)")
        } else {
            String::new()
        };
        let role = &self.role;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", "{role}: {text}{more}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{role}: {text}{more}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{role}: {text}{more}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "{role}: {text}{more}")
            }
        }
    }
}

/// Implements `ClientContext` for a context type with a field `health:
/// Arc<ClientHealth>`: librdkafka's log lines and errors go to it.
macro_rules! reports_to_health {
    ($context:ty) => {
        impl rdkafka::client::ClientContext for $context {
            fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
                self.health.line(level, facility, message);
            }

            fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
                self.health.report(&error, reason);
            }
        }
    };
}
pub(crate) use reports_to_health;

/// A client context that reports to a [`ClientHealth`].
#[derive(Debug, Clone)]
pub struct KafkaContext {
    pub health: Arc<ClientHealth>,
}

impl KafkaContext {
    /// The context of `ingest`'s or `route`'s client.
    pub fn new(role: impl Into<String>) -> Self {
        Self {
            health: ClientHealth::new(role, ROLE_SETTINGS),
        }
    }
}

reports_to_health!(KafkaContext);

/// For a consumer that joins no group (the start-up check of `route`).
impl rdkafka::consumer::ConsumerContext for KafkaContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as Code;

    fn global(code: Code) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn a_trouble_is_remembered_until_a_request_goes_through() {
        let health = ClientHealth::new("ingester", ROLE_SETTINGS);
        assert!(health.recent(Duration::from_secs(60)).is_none());
        health.report(
            &global(Code::Authentication),
            "SASL SCRAM authentication failed: broker responded with invalid-proof",
        );
        let trouble = health.recent(Duration::from_secs(60)).unwrap();
        assert_eq!(trouble.kind, TroubleKind::Authentication);
        assert!(trouble.detail.contains("invalid-proof"));
        // The refused login also downs the broker: still the login's fault.
        health.report(&global(Code::AllBrokersDown), "1/1 brokers are down");
        assert_eq!(
            health.recent(Duration::from_secs(60)).unwrap().kind,
            TroubleKind::Authentication
        );
        assert!(
            health
                .explain("producing")
                .starts_with("producing (Kafka refused the ingester's credentials: SASL SCRAM")
        );
        health.ok();
        assert!(health.recent(Duration::from_secs(60)).is_none());
        assert_eq!(health.explain("producing"), "producing");
        // A failed connection explains a failure too.
        health.report(
            &global(Code::BrokerTransportFailure),
            "Connect to ipv4#127.0.0.1:9 failed: Connection refused",
        );
        assert!(
            health
                .explain("producing")
                .contains("cannot reach Kafka: Connect to")
        );
    }

    #[test]
    fn an_error_without_text_takes_the_last_error_line() {
        let health = ClientHealth::new("router", ROLE_SETTINGS);
        health.line(
            RDKafkaLogLevel::Error,
            "FAIL",
            "SASL authentication error: broker responded with unknown-user",
        );
        health.report(&global(Code::Authentication), "");
        assert!(
            health
                .recent(Duration::from_secs(60))
                .unwrap()
                .detail
                .contains("unknown-user")
        );
        // Anything else is not a trouble of the whole client.
        health.ok();
        health.report(&global(Code::MessageTimedOut), "");
        assert!(health.recent(Duration::from_secs(60)).is_none());
    }
}
