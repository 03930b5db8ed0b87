//! The C ABI Fluent Bit calls: every `extern "C"` and every `unsafe` of the plugin.
//!
//! Each export turns its raw arguments into safe values and runs its body through
//! [`trampoline`], which catches panics and errors, logs them, and answers the code
//! that keeps Fluent Bit running and loses nothing: `FLB_RETRY` for a flush (the chunk
//! stays with Fluent Bit), `FLB_ERROR` for init and exit, -1 for register (for
//! `FLBPluginRegister` 0 means success). Nothing here aborts or exits the host.
//!
//! Ownership of an instance: `FLBPluginInit` stores `Arc::into_raw(Arc<Instance>)` in
//! the proxy context's `remote_context`; Fluent Bit hands it back to every
//! `FLBPluginFlushCtx` (which borrows it) and to `FLBPluginExitCtx` (which takes it
//! back, stops the agent and frees it). A second reference sits in the
//! [`registry`](crate::registry) of live instances, for the context-free fallbacks
//! `FLBPluginFlush`/`FLBPluginExit` only.
//!
//! The signatures are checked at compile time against the typedefs of
//! `fluent-bit-sys`, and `include/out_logferry.h` is generated from this file by
//! cbindgen (see `tests/header.rs`).

use std::any::Any;
use std::borrow::Cow;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use fluent_bit_sys::{
    FLB_ERROR, FLB_LOG_ERROR, FLB_LOG_INFO, FLB_OK, FLB_PROXY_EVENT_LOGS, FLB_PROXY_GOLANG,
    FLB_PROXY_OUTPUT_PLUGIN, FLB_RETRY, flb_api, flb_plugin_proxy_context, flb_plugin_proxy_def,
    flbgo_output_plugin,
};

use crate::instance::{EXIT_DEADLINE, Instance, Properties};
use crate::logging::HostLog;
use crate::{registry, workers};

/// `Name logferry` in an `[OUTPUT]` section.
const NAME: &CStr = c"logferry";
const DESCRIPTION: &CStr =
    c"logferry: durable disk spool, streamed over gRPC to a logferry backend";

/// What an export answers when its body fails or panics, and what that means.
struct OnFailure<T> {
    value: T,
    meaning: &'static str,
}

const ABORT_LOAD: OnFailure<c_int> = OnFailure {
    value: -1,
    meaning: "answering -1: Fluent Bit does not load the plugin",
};
const INIT_FAILED: OnFailure<c_int> = OnFailure {
    value: FLB_ERROR,
    meaning: "the instance is not started",
};
const RETRY_CHUNK: OnFailure<c_int> = OnFailure {
    value: FLB_RETRY,
    meaning: "answering FLB_RETRY: Fluent Bit keeps the chunk",
};
const EXIT_FAILED: OnFailure<c_int> = OnFailure {
    value: FLB_ERROR,
    meaning: "exit incomplete",
};
const PROCEED: OnFailure<c_int> = OnFailure {
    value: 0,
    meaning: "answering 0: Fluent Bit goes on",
};
const NOTHING: OnFailure<()> = OnFailure {
    value: (),
    meaning: "ignored",
};

/// Runs the safe `body` of export `export`. A panic or an `Err` is reported through
/// `report` (the instance's logger, Fluent Bit's, or stderr) and answered with
/// `on_failure`.
fn trampoline<T>(
    export: &str,
    on_failure: OnFailure<T>,
    report: &dyn Fn(&str),
    body: impl FnOnce() -> Result<T, String>,
) -> T {
    let message = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(error)) => format!("{export}: {error}; {}", on_failure.meaning),
        Err(payload) => {
            let message = format!(
                "panic in {export}: {}; {}",
                panic_message(&*payload),
                on_failure.meaning
            );
            // A payload's destructor may itself panic.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            message
        }
    };
    let _ = panic::catch_unwind(AssertUnwindSafe(|| report(&message)));
    on_failure.value
}

/// Reports on stderr, when there is no Fluent Bit logger to use.
fn to_stderr(message: &str) {
    eprintln!("[logferry] {message}");
}

/// Reports through `instance` if there is one.
fn through(instance: Option<&Instance>) -> impl Fn(&str) + '_ {
    move |message| match instance {
        Some(instance) => instance.log_error(message),
        None => to_stderr(message),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "(non-string panic payload)"
    }
}

/// Optional; runs before `FLBPluginRegister`. Always 0 (proceed).
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginPreRegister(hot_reloading: c_int) -> c_int {
    let _ = hot_reloading;
    trampoline("FLBPluginPreRegister", ABORT_LOAD, &to_stderr, || Ok(0))
}

/// Fills Fluent Bit's plugin definition: an output plugin named `logferry`.
/// Returns 0, or -1 when `def` is null.
///
/// # Safety
/// `def` is null or points to a writable, zero-initialised `flb_plugin_proxy_def`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginRegister(def: *mut flb_plugin_proxy_def) -> c_int {
    trampoline("FLBPluginRegister", ABORT_LOAD, &to_stderr, || {
        // SAFETY: Fluent Bit passes its calloc'd definition, exclusively ours for the
        // call and at least as large as our view of it; null is checked.
        let def = unsafe { def.as_mut() }.ok_or("null plugin definition")?;
        def.type_ = FLB_PROXY_OUTPUT_PLUGIN;
        def.proxy = FLB_PROXY_GOLANG;
        def.flags = 0;
        // 'static literals: valid as long as the library is loaded, never written.
        def.name = NAME.as_ptr().cast_mut();
        def.description = DESCRIPTION.as_ptr().cast_mut();
        def.event_type = FLB_PROXY_EVENT_LOGS;
        Ok(0)
    })
}

/// Starts one `[OUTPUT]` instance and stores it in `plugin->context->remote_context`.
/// Returns 1 on success, `FLB_ERROR` (0) after logging why it cannot start.
///
/// # Safety
/// `plugin` is null or points to Fluent Bit's `flbgo_output_plugin` for a new instance,
/// whose `api` and `o_ins` stay valid until `FLBPluginExitCtx` returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginInit(plugin: *mut flbgo_output_plugin) -> c_int {
    // SAFETY: per this function's contract.
    let host = unsafe { InitArgs::read(plugin) };
    let report = |message: &str| match &host {
        Ok(args) => args
            .log
            .print(FLB_LOG_ERROR, None, 0, &format!("[logferry] {message}")),
        Err(_) => to_stderr(message),
    };
    trampoline("FLBPluginInit", INIT_FAILED, &report, || {
        let args = host.as_ref().map_err(|e| e.to_string())?;
        let get_property = args.get_property;
        let o_ins = args.log.o_ins;
        // SAFETY: `get_property` and `o_ins` come from this FLBPluginInit call.
        let properties =
            Properties::read(|key| unsafe { output_property(get_property, o_ins, key) });
        let Ok(instance) = Instance::start(registry::next_name(), Box::new(args.log), &properties)
        else {
            return Ok(INIT_FAILED.value);
        };
        let instance = Arc::new(instance);
        registry::insert(instance.clone());
        // SAFETY: `context` is non-null (checked by `InitArgs::read`) and is this
        // instance's proxy context; `remote_context` is the field the plugin owns.
        unsafe { (*args.context).remote_context = Arc::into_raw(instance).cast_mut().cast() };
        Ok(1)
    })
}

/// What `FLBPluginInit` needs from Fluent Bit's `flbgo_output_plugin`.
struct InitArgs {
    get_property: GetProperty,
    log: FluentBitLog,
    context: *mut flb_plugin_proxy_context,
}

impl InitArgs {
    /// Copies the API table and pointers out of `plugin`, checking for nulls.
    ///
    /// # Safety
    /// As for `FLBPluginInit`.
    unsafe fn read(plugin: *mut flbgo_output_plugin) -> Result<Self, &'static str> {
        // SAFETY: Fluent Bit's structure, valid for the call; we read only the four
        // leading fields our view declares. Null is checked.
        let plugin = unsafe { plugin.as_ref() }.ok_or("null plugin")?;
        // SAFETY: Fluent Bit's API table outlives the instance. We copy its first seven
        // entries, which every Fluent Bit with this ABI has. Null is checked.
        let api: flb_api = *unsafe { plugin.api.as_ref() }.ok_or("no Fluent Bit API table")?;
        let get_property = api
            .output_get_property
            .ok_or("no output_get_property in the API")?;
        if plugin.context.is_null() {
            return Err("no proxy context to store the instance in");
        }
        Ok(Self {
            get_property,
            log: FluentBitLog {
                api,
                o_ins: plugin.o_ins,
            },
            context: plugin.context,
        })
    }
}

/// Stores one chunk in the instance's spool. Returns `FLB_OK` once it is durable,
/// `FLB_RETRY` when it cannot be stored now; never waits on the network.
///
/// # Safety
/// `remote_ctx` is null or what `FLBPluginInit` stored, not yet passed to
/// `FLBPluginExitCtx`; `data` is null or `len` readable bytes; `tag` is null or a
/// NUL-terminated string. All are valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginFlushCtx(
    remote_ctx: *mut c_void,
    data: *const c_void,
    len: usize,
    tag: *mut c_char,
) -> c_int {
    // SAFETY: per this function's contract.
    let instance = unsafe { instance_ref(remote_ctx) };
    trampoline("FLBPluginFlushCtx", RETRY_CHUNK, &through(instance), || {
        let instance = instance.ok_or("no instance context (FLBPluginInit did not succeed)")?;
        // SAFETY: per this function's contract.
        let (chunk, tag) = unsafe { chunk_and_tag(data, len, tag) }?;
        Ok(instance.flush(&tag, chunk))
    })
}

/// Fallback for a host without `FLBPluginFlushCtx`: flushes into the only live
/// instance; with none or several, logs an error and returns `FLB_RETRY`.
///
/// # Safety
/// As for `FLBPluginFlushCtx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginFlush(
    data: *const c_void,
    len: usize,
    tag: *mut c_char,
) -> c_int {
    let live = registry::single();
    let reporter = match &live {
        Ok(only) => Some(&**only),
        Err(all) => all.first().map(|first| &**first),
    };
    trampoline("FLBPluginFlush", RETRY_CHUNK, &through(reporter), || {
        let instance = live.as_deref().map_err(|all| ambiguous(all.len()))?;
        // SAFETY: per this function's contract.
        let (chunk, tag) = unsafe { chunk_and_tag(data, len, tag) }?;
        Ok(instance.flush(&tag, chunk))
    })
}

/// Optional; runs after every instance's init, before the pipeline runs. Notes whether
/// Fluent Bit has hot reload on, for the `Workers` warning. Always 0.
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginOutputPreRun(enable_hot_reload: c_int) -> c_int {
    trampoline("FLBPluginOutputPreRun", PROCEED, &to_stderr, || {
        workers::set_hot_reload(enable_hot_reload != 0);
        Ok(0)
    })
}

/// Optional; runs before exit. Does nothing: the work happens in `FLBPluginExitCtx`.
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginOutputPreExit(shutdown_by_hot_reloading: c_int) {
    let _ = shutdown_by_hot_reloading;
    trampoline("FLBPluginOutputPreExit", NOTHING, &to_stderr, || Ok(()));
}

/// Stops the instance: sends what is spooled for at most 5 s, joins every thread it
/// started, and frees it. Returns `FLB_OK`.
///
/// # Safety
/// `remote_ctx` is null or what `FLBPluginInit` stored; it must not be used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginExitCtx(remote_ctx: *mut c_void) -> c_int {
    // SAFETY: per this function's contract, the reference FLBPluginInit gave away
    // comes back here exactly once.
    let instance = unsafe { take_instance(remote_ctx) };
    // `exit` consumes the agent inside the trampoline, so dropping the rest of the
    // instance afterwards runs no code that could panic.
    trampoline(
        "FLBPluginExitCtx",
        EXIT_FAILED,
        &through(instance.as_deref()),
        || {
            // Fluent Bit calls exit for an instance whose init failed (or never ran
            // when it aborts at startup): there is nothing to stop.
            let Some(instance) = instance.as_ref() else {
                return Ok(FLB_OK);
            };
            registry::remove(instance);
            Ok(instance.exit(EXIT_DEADLINE))
        },
    )
}

/// Fallback for a host without `FLBPluginExitCtx`: stops the only live instance; with
/// none or several, logs an error and returns `FLB_ERROR`.
///
/// The fallback cannot free the instance's small shell, whose pointer only
/// `FLBPluginExitCtx` receives; the agent itself is stopped and freed.
#[unsafe(no_mangle)]
pub extern "C" fn FLBPluginExit() -> c_int {
    let live = registry::single();
    let reporter = match &live {
        Ok(only) => Some(&**only),
        Err(all) => all.first().map(|first| &**first),
    };
    trampoline("FLBPluginExit", EXIT_FAILED, &through(reporter), || {
        let instance = live.as_ref().map_err(|all| ambiguous(all.len()))?;
        registry::remove(instance);
        Ok(instance.exit(EXIT_DEADLINE))
    })
}

/// Runs before `dlclose`. Nothing to free: the definition's strings are static.
///
/// # Safety
/// `def` is the definition `FLBPluginRegister` filled (it is not used).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FLBPluginUnregister(def: *mut flb_plugin_proxy_def) {
    let _ = def;
    trampoline("FLBPluginUnregister", NOTHING, &to_stderr, || Ok(()));
}

// The exports have exactly the signatures of the ABI header.
const _: () = {
    let _: fluent_bit_sys::FLBPluginPreRegister_t = Some(FLBPluginPreRegister);
    let _: fluent_bit_sys::FLBPluginRegister_t = Some(FLBPluginRegister);
    let _: fluent_bit_sys::FLBPluginInit_t = Some(FLBPluginInit);
    let _: fluent_bit_sys::FLBPluginFlushCtx_t = Some(FLBPluginFlushCtx);
    let _: fluent_bit_sys::FLBPluginFlush_t = Some(FLBPluginFlush);
    let _: fluent_bit_sys::FLBPluginOutputPreRun_t = Some(FLBPluginOutputPreRun);
    let _: fluent_bit_sys::FLBPluginOutputPreExit_t = Some(FLBPluginOutputPreExit);
    let _: fluent_bit_sys::FLBPluginExitCtx_t = Some(FLBPluginExitCtx);
    let _: fluent_bit_sys::FLBPluginExit_t = Some(FLBPluginExit);
    let _: fluent_bit_sys::FLBPluginUnregister_t = Some(FLBPluginUnregister);
};

fn ambiguous(live: usize) -> String {
    match live {
        0 => "no live instance".to_string(),
        n => {
            format!("{n} live instances and no context to tell them apart (use FLBPluginFlushCtx)")
        }
    }
}

type GetProperty = unsafe extern "C" fn(*const c_char, *mut c_void) -> *const c_char;

/// The value of property `key`, copied, or `None` when unset.
///
/// # Safety
/// `get` is Fluent Bit's `output_get_property` and `o_ins` the instance it was handed
/// with, both still valid.
unsafe fn output_property(get: GetProperty, o_ins: *mut c_void, key: &str) -> Option<String> {
    let key = CString::new(key).ok()?;
    // SAFETY: per this function's contract; `key` is NUL-terminated and outlives the call.
    let value = unsafe { get(key.as_ptr(), o_ins) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a NUL-terminated string owned by Fluent Bit, valid
    // during this call; it is copied at once.
    Some(
        unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Borrows the instance behind `remote_ctx`.
///
/// # Safety
/// `ctx` is null or a pointer `FLBPluginInit` stored that `FLBPluginExitCtx` has not
/// taken back; the returned reference must not outlive the current export call.
unsafe fn instance_ref<'a>(ctx: *mut c_void) -> Option<&'a Instance> {
    // SAFETY: per the contract, a non-null `ctx` came from `Arc::into_raw` and its
    // reference is held until FLBPluginExitCtx.
    unsafe { ctx.cast_const().cast::<Instance>().as_ref() }
}

/// Takes back the reference `FLBPluginInit` stored in `remote_ctx`.
///
/// # Safety
/// `ctx` is null or a pointer `FLBPluginInit` stored, passed here at most once.
unsafe fn take_instance(ctx: *mut c_void) -> Option<Arc<Instance>> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: per the contract, `ctx` came from `Arc::into_raw::<Instance>` and this
    // is the only `from_raw` for it.
    Some(unsafe { Arc::from_raw(ctx.cast_const().cast::<Instance>()) })
}

/// The chunk and tag of a flush, borrowed for the call.
///
/// # Safety
/// `data` is null or `len` readable bytes; `tag` is null or NUL-terminated; both stay
/// valid for `'a`.
unsafe fn chunk_and_tag<'a>(
    data: *const c_void,
    len: usize,
    tag: *const c_char,
) -> Result<(&'a [u8], Cow<'a, str>), String> {
    let chunk = match (data.is_null(), len) {
        (_, 0) => &[][..],
        (true, _) => return Err(format!("null data for a chunk of {len} bytes")),
        // SAFETY: per the contract, `data` points to `len` readable bytes.
        (false, _) => unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) },
    };
    let tag = if tag.is_null() {
        Cow::Borrowed("")
    } else {
        // SAFETY: per the contract, a NUL-terminated string.
        unsafe { CStr::from_ptr(tag) }.to_string_lossy()
    };
    Ok((chunk, tag))
}

/// Fluent Bit's logger for one instance: `log_print`, filtered by `output_log_check`.
#[derive(Clone, Copy)]
struct FluentBitLog {
    api: flb_api,
    o_ins: *mut c_void,
}

// SAFETY: `o_ins` is never dereferenced here; it is only passed back to Fluent Bit's
// `output_log_check`, which Fluent Bit's own worker threads call concurrently. The rest
// are plain function pointers.
unsafe impl Send for FluentBitLog {}
// SAFETY: as for `Send`; `FluentBitLog` has no interior mutability.
unsafe impl Sync for FluentBitLog {}

impl HostLog for FluentBitLog {
    fn enabled(&self, level: c_int) -> bool {
        match self.api.output_log_check {
            // SAFETY: Fluent Bit's function with the instance it handed us; the
            // `Logger` detaches this sink before FLBPluginExitCtx returns.
            Some(check) => (unsafe { check(self.o_ins, level) }) != 0,
            // Without the check, print what Fluent Bit prints by default.
            None => level <= FLB_LOG_INFO,
        }
    }

    fn print(&self, level: c_int, file: Option<&str>, line: u32, message: &str) {
        let Some(log_print) = self.api.log_print else {
            eprintln!("{message}");
            return;
        };
        let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
        let file = file.and_then(|file| CString::new(file).ok());
        let file_ptr = file.as_ref().map_or(std::ptr::null(), |file| file.as_ptr());
        let line = c_int::try_from(line).unwrap_or(0);
        // SAFETY: Fluent Bit's printf-style logger; the format "%s" consumes exactly
        // the one `char *` passed, a NUL-terminated string alive across the call, as
        // is `file` (or null).
        unsafe { log_print(level, file_ptr, line, c"%s".as_ptr(), message.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use fluent_bit_sys::FLB_OK;

    use super::*;

    #[test]
    fn register_fills_the_definition() {
        let mut def = flb_plugin_proxy_def::default();
        // SAFETY: a valid, zeroed definition.
        assert_eq!(unsafe { FLBPluginRegister(&mut def) }, 0);
        assert_eq!(
            (def.type_, def.proxy, def.flags, def.event_type),
            (2, 11, 0, 0)
        );
        // SAFETY: register stored a static C string.
        assert_eq!(unsafe { CStr::from_ptr(def.name) }, c"logferry");
        assert!(def.config_map.is_null());
        // SAFETY: null is allowed and refused.
        assert_eq!(unsafe { FLBPluginRegister(std::ptr::null_mut()) }, -1);
    }

    #[test]
    fn null_context_and_data_are_retried_not_dropped() {
        // SAFETY: nulls are allowed by the contract.
        let rc = unsafe {
            FLBPluginFlushCtx(
                std::ptr::null_mut(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, FLB_RETRY);
        // Exit of an instance that never started has nothing to stop.
        // SAFETY: as above.
        assert_eq!(unsafe { FLBPluginExitCtx(std::ptr::null_mut()) }, FLB_OK);
        // SAFETY: as above.
        assert_eq!(unsafe { FLBPluginInit(std::ptr::null_mut()) }, FLB_ERROR);
    }

    #[test]
    fn a_panic_becomes_the_failure_code() {
        let reported = std::cell::RefCell::new(Vec::new());
        let report = |message: &str| reported.borrow_mut().push(message.to_string());
        let rc = trampoline("Test", RETRY_CHUNK, &report, || -> Result<c_int, String> {
            panic!("boom")
        });
        assert_eq!(rc, FLB_RETRY);
        assert_eq!(
            trampoline("Test", RETRY_CHUNK, &report, || Ok(FLB_OK)),
            FLB_OK
        );
        assert_eq!(
            trampoline("Test", ABORT_LOAD, &report, || Err("no".into())),
            -1
        );
        assert_eq!(
            *reported.borrow(),
            [
                "panic in Test: boom; answering FLB_RETRY: Fluent Bit keeps the chunk",
                "Test: no; answering -1: Fluent Bit does not load the plugin",
            ]
        );
    }
}
