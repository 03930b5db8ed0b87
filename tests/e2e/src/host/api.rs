//! The `flb_api` the host hands to each instance, and the output instance (`o_ins`)
//! its functions receive.
//!
//! As in Fluent Bit, `o_ins` is an opaque pointer the plugin passes back; here it
//! points to an [`OutputInstance`]: the instance's properties (keys matched
//! case-insensitively) and its log level.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};

use fluent_bit_sys::{FLB_LOG_TRACE, flb_api};

use super::log::{Level, logferry_e2e_log_print};

/// What `o_ins` points to.
#[derive(Debug)]
pub(crate) struct OutputInstance {
    /// Lower-cased key to value; the strings stay put while the instance lives.
    properties: HashMap<String, CString>,
    /// `output_log_check` passes this level and those more severe.
    log_level: c_int,
}

impl OutputInstance {
    /// An instance with these `[OUTPUT]` properties. `log_level` is, as in Fluent Bit,
    /// the host's own: it sets the instance's level (default `trace`: everything
    /// passes) and is not served by `output_get_property`.
    pub(crate) fn new(properties: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        let mut log_level = FLB_LOG_TRACE;
        for (key, value) in properties {
            let key = key.to_ascii_lowercase();
            if key == "log_level" {
                log_level = parse_level(value)?;
                continue;
            }
            map.insert(key, CString::new(*value)?);
        }
        Ok(Self {
            properties: map,
            log_level,
        })
    }
}

fn parse_level(value: &str) -> anyhow::Result<c_int> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => Level::Error.to_flb(),
        "warn" | "warning" => Level::Warn.to_flb(),
        "info" => Level::Info.to_flb(),
        "debug" => Level::Debug.to_flb(),
        "trace" => Level::Trace.to_flb(),
        other => anyhow::bail!("log_level `{other}` is not off/error/warn/info/debug/trace"),
    })
}

/// The API table of one instance, as Fluent Bit fills it.
pub(crate) fn api_table() -> flb_api {
    flb_api {
        output_get_property: Some(output_get_property),
        input_get_property: Some(input_get_property),
        output_get_cmt_instance: Some(get_cmt_instance),
        input_get_cmt_instance: Some(get_cmt_instance),
        log_print: Some(logferry_e2e_log_print),
        input_log_check: Some(input_log_check),
        output_log_check: Some(output_log_check),
    }
}

/// # Safety
/// `key` is null or NUL-terminated; `o_ins` is null or an [`OutputInstance`] that
/// outlives the returned pointer's use.
unsafe extern "C" fn output_get_property(key: *const c_char, o_ins: *mut c_void) -> *const c_char {
    if key.is_null() || o_ins.is_null() {
        return std::ptr::null();
    }
    // SAFETY: per this function's contract.
    let instance = unsafe { &*o_ins.cast_const().cast::<OutputInstance>() };
    // SAFETY: per this function's contract.
    let key = unsafe { CStr::from_ptr(key) }
        .to_string_lossy()
        .to_ascii_lowercase();
    instance
        .properties
        .get(&key)
        .map_or(std::ptr::null(), |value| value.as_ptr())
}

/// No input instances exist in this host.
unsafe extern "C" fn input_get_property(_: *const c_char, _: *mut c_void) -> *const c_char {
    std::ptr::null()
}

/// No CMetrics here.
unsafe extern "C" fn get_cmt_instance(_: *mut c_void) -> *mut c_void {
    std::ptr::null_mut()
}

unsafe extern "C" fn input_log_check(_: *mut c_void, _: c_int) -> c_int {
    0
}

/// # Safety
/// `o_ins` is null or a live [`OutputInstance`].
unsafe extern "C" fn output_log_check(o_ins: *mut c_void, level: c_int) -> c_int {
    if o_ins.is_null() {
        return 0;
    }
    // SAFETY: per this function's contract.
    let instance = unsafe { &*o_ins.cast_const().cast::<OutputInstance>() };
    c_int::from(level <= instance.log_level)
}
