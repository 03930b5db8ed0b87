//! A Fluent Bit host emulator: loads the built `libout_logferry.so` and drives it
//! through the proxy ABI exactly as Fluent Bit 5.1 does (see
//! `shared/fluent-bit-proxy-abi.md`).
//!
//! ```no_run
//! use logferry_e2e::host::Host;
//! let host = Host::load(&logferry_e2e::plugin_path()).unwrap();
//! let instance = host.init(&[("endpoint", "http://127.0.0.1:1") /* ... */]).unwrap();
//! assert_eq!(instance.flush("app.log", b"\x92..."), 1);
//! instance.exit();
//! host.unload().unwrap();
//! ```
//!
//! - [`library`]: `dlopen(RTLD_LAZY)`, the symbols by name, `FLBPluginPreRegister`
//!   and `FLBPluginRegister` into a zeroed definition; `unload` runs
//!   `FLBPluginUnregister` and `dlclose`. The same path can be loaded again afterwards
//!   (Fluent Bit's hot reload).
//! - [`instance`]: per `[OUTPUT]`, a real `flb_api`, an `flbgo_output_plugin` with
//!   extra zeroed space after it (Fluent Bit's is larger), a proxy context;
//!   `FLBPluginInit`, then `FLBPluginFlushCtx` from any thread, then
//!   `FLBPluginOutputPreExit` + `FLBPluginExitCtx`.
//! - `api`: the `flb_api` functions; properties are served from the instance's map,
//!   case-insensitively, and `output_log_check` honours a `log_level` property
//!   (default: everything).
//! - [`log`]: what the plugin prints through `log_print` (a C shim, since Rust cannot
//!   define a variadic), kept per process and echoed to stderr.
//! - [`workers`]: `Workers N` as Fluent Bit 5.1.1 runs it for an external output: a
//!   first pool started after `FLBPluginInit` and never stopped, and a second that gets
//!   the flushes and is stopped before exit. [`Host::pre_run`] then sends
//!   `FLBPluginOutputPreRun(enable_hot_reload)`, and
//!   [`Instance::exit_for_hot_reload`] the exit of a reload.

mod api;
pub mod instance;
pub mod library;
pub mod log;
pub mod workers;

pub use instance::{InitError, Instance};
pub use library::{Definition, Host, LoadOptions};
pub use log::{Level, LogLine};
pub use workers::{OrphanedPool, WorkerPool};
