//! The plugin's logs go to Fluent Bit's own logger.
//!
//! Each instance builds a [`tracing::Dispatch`] whose only layer, [`HostLayer`], turns
//! every event into one line, `[logferry.0] message key=value ...`, and hands it to
//! [`Logger`]. The logger forwards it to a [`HostLog`]: in the plugin, Fluent Bit's
//! `log_print` (implemented in [`crate::ffi`], the only place that may call C).
//!
//! The same dispatch is given to the agent, whose threads log through it, and every
//! export runs its body under it, so all lines of an instance carry its name.
//!
//! Levels map one to one onto Fluent Bit's (`error` = 1 ... `trace` = 5), and the
//! instance's `Log_Level` decides through [`HostLog::enabled`]. Events of other crates
//! (tonic, h2, hyper, ...) are passed at `info` and above only, so `Log_Level debug`
//! shows the plugin's debug lines without the HTTP/2 frame traces.
//!
//! [`Logger::detach`] cuts the link to Fluent Bit when the instance exits: a line
//! logged after that (there should be none) goes nowhere rather than into a freed
//! Fluent Bit instance.

use std::ffi::c_int;
use std::fmt::{self, Write as _};
use std::sync::{Arc, PoisonError, RwLock};

use fluent_bit_sys::{FLB_LOG_DEBUG, FLB_LOG_ERROR, FLB_LOG_INFO, FLB_LOG_TRACE, FLB_LOG_WARN};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber, span};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Where an instance's lines end up: Fluent Bit's logger in the plugin, a `Vec` in tests.
pub(crate) trait HostLog: Send + Sync {
    /// Whether the host prints lines of `level` (a `FLB_LOG_*` value) for this instance.
    fn enabled(&self, level: c_int) -> bool;
    /// Prints one line. `file` and `line` name the Rust source of the event.
    fn print(&self, level: c_int, file: Option<&str>, line: u32, message: &str);
}

/// The Fluent Bit level of a tracing level.
pub(crate) fn flb_level(level: &Level) -> c_int {
    match *level {
        Level::ERROR => FLB_LOG_ERROR,
        Level::WARN => FLB_LOG_WARN,
        Level::INFO => FLB_LOG_INFO,
        Level::DEBUG => FLB_LOG_DEBUG,
        Level::TRACE => FLB_LOG_TRACE,
    }
}

/// One instance's link to the host logger, prefixing every line with the instance name.
pub(crate) struct Logger {
    name: String,
    sink: RwLock<Option<Box<dyn HostLog>>>,
}

impl Logger {
    pub(crate) fn new(name: String, sink: Box<dyn HostLog>) -> Self {
        Self {
            name,
            sink: RwLock::new(Some(sink)),
        }
    }

    pub(crate) fn enabled(&self, level: c_int) -> bool {
        let sink = self.sink.read().unwrap_or_else(PoisonError::into_inner);
        sink.as_ref().is_some_and(|sink| sink.enabled(level))
    }

    /// Prints `[name] message` if the host wants `level`.
    pub(crate) fn print(&self, level: c_int, file: Option<&str>, line: u32, message: &str) {
        let sink = self.sink.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(sink) = sink.as_ref().filter(|sink| sink.enabled(level)) {
            sink.print(level, file, line, &format!("[{}] {message}", self.name));
        }
    }

    /// Stops forwarding to the host. Waits for lines being printed right now.
    pub(crate) fn detach(&self) {
        self.sink
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// A dispatch that sends every event to `logger`.
pub(crate) fn dispatch(logger: Arc<Logger>) -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(HostLayer { logger }))
}

/// True for events of the logferry crates, which may log at every level.
fn is_ours(target: &str) -> bool {
    target.starts_with("logferry") || target.starts_with("out_logferry")
}

/// The layer of [`dispatch`]. See the module docs.
struct HostLayer {
    logger: Arc<Logger>,
}

/// The formatted fields of a span, kept in its extensions.
struct SpanFields(String);

impl<S> Layer<S> for HostLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Several instances with different `Log_Level`s share the callsites, and the
        // level may change at run time: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        if metadata.is_span() {
            // Spans carry context for the events inside them; they print nothing.
            return true;
        }
        let level = metadata.level();
        if !is_ours(metadata.target()) && *level > Level::INFO {
            return false;
        }
        self.logger.enabled(flb_level(level))
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = FieldWriter::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            let mut more = FieldWriter {
                fields: std::mem::take(fields),
                ..Default::default()
            };
            values.record(&mut more);
            *fields = more.fields;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                line.push_str(span.name());
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>()
                    && !fields.is_empty()
                {
                    let _ = write!(line, "{{{}}}", fields.trim_start());
                }
                line.push_str(": ");
            }
        }
        if !is_ours(metadata.target()) {
            let _ = write!(line, "{}: ", metadata.target());
        }
        let mut fields = FieldWriter::default();
        event.record(&mut fields);
        line.push_str(&fields.message);
        line.push_str(&fields.fields);
        self.logger.print(
            flb_level(metadata.level()),
            metadata.file(),
            metadata.line().unwrap_or(0),
            &line,
        );
    }
}

/// Collects the `message` field and ` key=value` for the others.
#[derive(Default)]
struct FieldWriter {
    message: String,
    fields: String,
}

impl Visit for FieldWriter {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The lines a [`Capture`] was given: (level, message).
    pub(crate) type Lines = Arc<Mutex<Vec<(c_int, String)>>>;

    /// A host that keeps the lines it is given, printing `max_level` and more severe.
    #[derive(Default)]
    pub(crate) struct Capture {
        pub(crate) max_level: c_int,
        pub(crate) lines: Lines,
    }

    impl Capture {
        pub(crate) fn at(max_level: c_int) -> (Box<dyn HostLog>, Lines) {
            let capture = Capture {
                max_level,
                ..Default::default()
            };
            let lines = capture.lines.clone();
            (Box::new(capture), lines)
        }
    }

    impl HostLog for Capture {
        fn enabled(&self, level: c_int) -> bool {
            level <= self.max_level
        }

        fn print(&self, level: c_int, _: Option<&str>, _: u32, message: &str) {
            self.lines
                .lock()
                .unwrap()
                .push((level, message.to_string()));
        }
    }

    #[test]
    fn lines_carry_the_instance_name_spans_and_fields() {
        let (sink, lines) = Capture::at(FLB_LOG_INFO);
        let logger = Arc::new(Logger::new("logferry.7".into(), sink));
        tracing::dispatcher::with_default(&dispatch(logger), || {
            let span = tracing::info_span!("stream", endpoint = "127.0.0.1:1");
            let _entered = span.enter();
            tracing::warn!(seq = 3_u64, tag = "app.log", "spool is full");
            tracing::info!("plain");
            tracing::debug!("filtered by the host level");
        });
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            vec![
                (
                    FLB_LOG_WARN,
                    "[logferry.7] stream{endpoint=127.0.0.1:1}: spool is full seq=3 tag=app.log"
                        .to_string()
                ),
                (
                    FLB_LOG_INFO,
                    "[logferry.7] stream{endpoint=127.0.0.1:1}: plain".to_string()
                ),
            ]
        );
    }

    #[test]
    fn other_crates_are_capped_at_info() {
        let (sink, lines) = Capture::at(FLB_LOG_TRACE);
        let logger = Arc::new(Logger::new("logferry.0".into(), sink));
        tracing::dispatcher::with_default(&dispatch(logger), || {
            tracing::debug!(target: "h2::codec", "frame");
            tracing::info!(target: "h2::proto", "goaway");
            tracing::trace!("ours");
        });
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            vec![
                (FLB_LOG_INFO, "[logferry.0] h2::proto: goaway".to_string()),
                (FLB_LOG_TRACE, "[logferry.0] ours".to_string()),
            ]
        );
    }

    #[test]
    fn detached_logger_prints_nothing() {
        let (sink, lines) = Capture::at(FLB_LOG_TRACE);
        let logger = Arc::new(Logger::new("logferry.0".into(), sink));
        let dispatch = dispatch(logger.clone());
        logger.detach();
        tracing::dispatcher::with_default(&dispatch, || tracing::error!("after exit"));
        assert!(lines.lock().unwrap().is_empty());
        assert!(!logger.enabled(FLB_LOG_ERROR));
    }
}
