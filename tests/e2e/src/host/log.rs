//! The lines plugins print through the host's `log_print`, kept for the whole process.
//!
//! `log_print` is C (`csrc/log_print.c`): it formats the printf-style arguments and
//! calls [`record`], which appends a [`LogLine`] to a process-wide list and echoes it
//! to stderr like Fluent Bit would (`[error] [logferry.0] ...`). Tests read the list
//! with [`lines`], [`lines_since`] or through the host's per-call views.

use std::ffi::{CStr, c_char, c_int};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, Once, PoisonError};
use std::thread::{self, ThreadId};

use fluent_bit_sys::{FLB_LOG_DEBUG, FLB_LOG_ERROR, FLB_LOG_INFO, FLB_LOG_TRACE, FLB_LOG_WARN};

/// A Fluent Bit log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    /// A value outside Fluent Bit's levels.
    Other(i32),
}

impl Level {
    pub fn from_flb(level: c_int) -> Self {
        match level {
            FLB_LOG_ERROR => Level::Error,
            FLB_LOG_WARN => Level::Warn,
            FLB_LOG_INFO => Level::Info,
            FLB_LOG_DEBUG => Level::Debug,
            FLB_LOG_TRACE => Level::Trace,
            other => Level::Other(other),
        }
    }

    /// The `FLB_LOG_*` value.
    pub fn to_flb(self) -> c_int {
        match self {
            Level::Error => FLB_LOG_ERROR,
            Level::Warn => FLB_LOG_WARN,
            Level::Info => FLB_LOG_INFO,
            Level::Debug => FLB_LOG_DEBUG,
            Level::Trace => FLB_LOG_TRACE,
            Level::Other(level) => level,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Error => f.write_str("error"),
            Level::Warn => f.write_str("warn"),
            Level::Info => f.write_str("info"),
            Level::Debug => f.write_str("debug"),
            Level::Trace => f.write_str("trace"),
            Level::Other(level) => write!(f, "level {level}"),
        }
    }
}

/// One line a plugin printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    /// The formatted message, exactly as `log_print` produced it.
    pub message: String,
    /// The source file the plugin passed, if any.
    pub file: Option<String>,
    pub line: i32,
    /// The thread that called `log_print`.
    pub thread: ThreadId,
}

impl LogLine {
    /// The instance name of a `[logferry.N] ...` line.
    pub fn instance(&self) -> Option<&str> {
        self.split_instance().map(|(name, _)| name)
    }

    /// The message without its `[instance] ` prefix.
    pub fn text(&self) -> &str {
        self.split_instance()
            .map_or(&self.message, |(_, text)| text)
    }

    fn split_instance(&self) -> Option<(&str, &str)> {
        let rest = self.message.strip_prefix('[')?;
        let (name, text) = rest.split_once("] ")?;
        (!name.contains(' ')).then_some((name, text))
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.level, self.message)
    }
}

static LINES: Mutex<Vec<LogLine>> = Mutex::new(Vec::new());

/// Every line printed so far in this process.
pub fn lines() -> Vec<LogLine> {
    LINES.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// How many lines have been printed so far; a mark for [`lines_since`].
pub fn mark() -> usize {
    LINES.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// The lines printed after `mark`.
pub fn lines_since(mark: usize) -> Vec<LogLine> {
    let lines = LINES.lock().unwrap_or_else(PoisonError::into_inner);
    lines.get(mark..).unwrap_or_default().to_vec()
}

/// Connects the C `log_print` to [`record`]; idempotent.
pub(crate) fn install_sink() {
    static INSTALL: Once = Once::new();
    // SAFETY: `record` has the signature the C shim expects and may be called from any
    // thread; storing it is an atomic write.
    INSTALL.call_once(|| unsafe { logferry_e2e_set_log_sink(record) });
}

type Sink = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char);

unsafe extern "C" {
    fn logferry_e2e_set_log_sink(sink: Sink);
    /// The `log_print` of every `flb_api` the host builds.
    pub(crate) fn logferry_e2e_log_print(
        level: c_int,
        file: *const c_char,
        line: c_int,
        fmt: *const c_char,
        ...
    );
}

/// Called by the C shim with a formatted line.
///
/// # Safety
/// `message` is a NUL-terminated string; `file` is null or one.
unsafe extern "C" fn record(
    level: c_int,
    file: *const c_char,
    line: c_int,
    message: *const c_char,
) {
    // SAFETY: per this function's contract.
    let message = unsafe { owned(message) }.unwrap_or_default();
    // SAFETY: per this function's contract.
    let file = unsafe { owned(file) };
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        let line = LogLine {
            level: Level::from_flb(level),
            message,
            file,
            line,
            thread: thread::current().id(),
        };
        eprintln!("{line}");
        LINES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }));
}

/// # Safety
/// `ptr` is null or a NUL-terminated string.
unsafe fn owned(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per this function's contract.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}
