//! `libout_logferry.so`: the logferry output plugin for Fluent Bit.
//!
//! A thin shell over the agent core (`logferry-agent`): Fluent Bit loads this library
//! as an external ("proxy") output plugin (`fluent-bit -e libout_logferry.so` or a
//! `[PLUGINS]` file), and every chunk it flushes goes into the agent's disk spool; the
//! agent streams the spool to the backend on its own threads.
//!
//! - [`ffi`]: the C exports (`FLBPluginRegister`, `FLBPluginInit`, `FLBPluginFlushCtx`,
//!   `FLBPluginExitCtx`, ...). All of the crate's `unsafe` lives there, and every
//!   export runs through one panic-catching trampoline. The C header
//!   `include/out_logferry.h` is generated from it.
//! - `instance`: one `[OUTPUT]` instance (the agent plus its logger), reached through
//!   Fluent Bit's `remote_context` pointer; safe code.
//! - `logging`: a `tracing` layer that prints through Fluent Bit's `log_print`, with
//!   the instance name on every line.
//! - `registry`: the live instances, the only global; it serves only the context-free
//!   fallbacks `FLBPluginFlush`/`FLBPluginExit`.
//! - `workers`: the warning that `Workers` crashes Fluent Bit on hot reload, given at
//!   the first flush on a worker thread, and what `FLBPluginOutputPreRun` said about
//!   hot reload (a process-wide fact of the host).
//!
//! Properties are those of [`logferry_agent::PROPERTIES`] (`endpoint`, `access_key`,
//! `buffer.path`, ...).

pub mod ffi;
mod instance;
mod logging;
mod registry;
mod workers;
