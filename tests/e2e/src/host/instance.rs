//! One `[OUTPUT]` instance of a loaded plugin.

use std::ffi::{CString, c_int, c_void};
use std::fmt;
use std::thread;

use fluent_bit_sys::{flb_api, flb_plugin_proxy_context, flbgo_output_plugin};

use super::api::{self, OutputInstance};
use super::library::Host;
use super::log::{self, LogLine};

/// Fluent Bit's `struct flbgo_output_plugin` is larger than the part the ABI shows the
/// plugin; the host allocates it with this much zeroed space after it, so a plugin that
/// wrongly reads or writes past its view does not go unnoticed by sanitizers and does
/// not corrupt the host's other fields.
#[repr(C)]
struct FluentBitPlugin {
    plugin: flbgo_output_plugin,
    fluent_bit_fields: [usize; 16],
}

/// Everything the host allocates for one instance; the plugin holds pointers into it.
struct Allocation {
    plugin: FluentBitPlugin,
    context: flb_plugin_proxy_context,
    api: flb_api,
    output: OutputInstance,
    /// Where Fluent Bit keeps the plugin name (`flbgo_output_plugin.reserved`).
    name: CString,
}

/// `FLBPluginInit` failed.
#[derive(Debug)]
pub struct InitError {
    /// What `FLBPluginInit` returned (0 or less), or -1 when the host refused the
    /// properties before calling it.
    pub code: i32,
    /// The lines the plugin logged on the calling thread during the call.
    pub log: Vec<LogLine>,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FLBPluginInit returned {}", self.code)?;
        for line in &self.log {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InitError {}

/// A running instance: [`flush`](Self::flush) from any number of threads, then
/// [`exit`](Self::exit) (also done on drop).
pub struct Instance<'h> {
    host: &'h Host,
    /// From `Box::into_raw`; freed on drop. The plugin holds pointers into it until
    /// exit, so it is only reached through this raw pointer.
    allocation: *mut Allocation,
    remote_context: *mut c_void,
    init_log: Vec<LogLine>,
    exited: bool,
}

// SAFETY: after init the allocation is only read (by the host and by the plugin, which
// Fluent Bit calls from several worker threads at once: `Workers N`); that the plugin's
// FlushCtx is thread-safe is what the tests check.
unsafe impl Send for Instance<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for Instance<'_> {}

impl fmt::Debug for Instance<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name())
            .field("remote_context", &self.remote_context)
            .field("exited", &self.exited)
            .finish()
    }
}

impl<'h> Instance<'h> {
    pub(crate) fn init(host: &'h Host, properties: &[(&str, &str)]) -> Result<Self, InitError> {
        let output = OutputInstance::new(properties).map_err(|e| InitError {
            code: -1,
            log: vec![LogLine {
                level: log::Level::Error,
                message: format!("host: {e}"),
                file: None,
                line: 0,
                thread: thread::current().id(),
            }],
        })?;
        let allocation = Box::into_raw(Box::new(Allocation {
            // SAFETY: all-zero is a valid `FluentBitPlugin` (null pointers and zeros),
            // as Fluent Bit's calloc gives.
            plugin: unsafe { std::mem::zeroed() },
            context: flb_plugin_proxy_context::default(),
            api: api::api_table(),
            output,
            name: CString::new(host.definition().name).unwrap_or_default(),
        }));
        // SAFETY: `allocation` is valid and not otherwise borrowed; the pointers stored
        // point into the same allocation, which lives until drop.
        let plugin = unsafe {
            let plugin = &raw mut (*allocation).plugin.plugin;
            (*plugin).reserved = (*allocation).name.as_ptr().cast_mut().cast();
            (*plugin).api = &raw mut (*allocation).api;
            (*plugin).o_ins = (&raw mut (*allocation).output).cast();
            (*plugin).context = &raw mut (*allocation).context;
            plugin
        };
        let mut instance = Instance {
            host,
            allocation,
            remote_context: std::ptr::null_mut(),
            init_log: Vec::new(),
            exited: true, // until init succeeds
        };

        let mark = log::mark();
        let init = host.symbols().init.expect("checked at load");
        // SAFETY: a complete `flbgo_output_plugin` with api, o_ins and context, valid
        // until this instance is dropped.
        let code = unsafe { init(plugin) };
        let me = thread::current().id();
        instance.init_log = log::lines_since(mark)
            .into_iter()
            .filter(|line| line.thread == me)
            .collect();
        if code <= 0 {
            return Err(InitError {
                code,
                log: std::mem::take(&mut instance.init_log),
            });
        }
        // SAFETY: the plugin wrote `remote_context` during init, which has returned.
        instance.remote_context = unsafe { (*allocation).context.remote_context };
        instance.exited = false;
        Ok(instance)
    }

    /// The `remote_context` the plugin stored.
    pub fn remote_context(&self) -> *mut c_void {
        self.remote_context
    }

    /// The lines the plugin logged on the calling thread during `FLBPluginInit`.
    pub fn init_log(&self) -> &[LogLine] {
        &self.init_log
    }

    /// The instance name the plugin prefixes its lines with (`logferry.N`), taken from
    /// the lines it logged during init.
    pub fn name(&self) -> Option<&str> {
        self.init_log.iter().find_map(LogLine::instance)
    }

    /// Every line this instance has logged so far, from any thread.
    pub fn log(&self) -> Vec<LogLine> {
        let name = self.name();
        log::lines()
            .into_iter()
            .filter(|line| name.is_some() && line.instance() == name)
            .collect()
    }

    /// Hands one chunk to the plugin (`FLBPluginFlushCtx`, or `FLBPluginFlush` when the
    /// host was told not to use it). Returns the plugin's answer: `FLB_OK`, `FLB_RETRY`
    /// or `FLB_ERROR`. Callable from many threads at once.
    pub fn flush(&self, tag: &str, chunk: &[u8]) -> c_int {
        assert!(!self.exited, "flush after exit");
        let tag = CString::new(tag).expect("a tag has no NUL byte");
        let symbols = self.host.symbols();
        let data = chunk.as_ptr().cast::<c_void>();
        match (symbols.flush_ctx, symbols.flush) {
            // SAFETY: the context init returned, a chunk and a tag valid for the call.
            (Some(flush_ctx), _) => unsafe {
                flush_ctx(
                    self.remote_context,
                    data,
                    chunk.len(),
                    tag.as_ptr().cast_mut(),
                )
            },
            // SAFETY: as above.
            (None, Some(flush)) => unsafe { flush(data, chunk.len(), tag.as_ptr().cast_mut()) },
            (None, None) => unreachable!("checked at load"),
        }
    }

    /// `FLBPluginOutputPreExit(0)`, then `FLBPluginExitCtx` (or `FLBPluginExit`).
    /// Returns what the exit callback returned (-1 when the plugin has none).
    pub fn exit(mut self) -> c_int {
        self.exit_once(false)
    }

    /// As [`exit`](Self::exit), for a hot reload: `FLBPluginOutputPreExit(1)`.
    pub fn exit_for_hot_reload(mut self) -> c_int {
        self.exit_once(true)
    }

    fn exit_once(&mut self, hot_reload: bool) -> c_int {
        if std::mem::replace(&mut self.exited, true) {
            return -1;
        }
        let symbols = self.host.symbols();
        if let Some(pre_exit) = symbols.pre_exit {
            // SAFETY: the ABI's signature: whether this shutdown is a hot reload.
            unsafe { pre_exit(c_int::from(hot_reload)) };
        }
        match (symbols.exit_ctx, symbols.exit) {
            // SAFETY: the context init returned, passed to exit exactly once.
            (Some(exit_ctx), _) => unsafe { exit_ctx(self.remote_context) },
            // SAFETY: the ABI's signature.
            (None, Some(exit)) => unsafe { exit() },
            (None, None) => -1,
        }
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        self.exit_once(false);
        // SAFETY: from Box::into_raw in `init`; the plugin has exited (or never
        // started) and holds no pointer into it any more.
        drop(unsafe { Box::from_raw(self.allocation) });
    }
}
