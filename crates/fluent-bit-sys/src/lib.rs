//! Raw bindings to Fluent Bit's external ("proxy") output plugin ABI.
//!
//! Generated at build time by bindgen from `include/fluent_bit_proxy.h`, a header this
//! crate writes from the ABI facts in `shared/fluent-bit-proxy-abi.md` (Fluent Bit
//! 5.1.1). Nothing here is Fluent Bit code.
//!
//! - Structures: [`flb_plugin_proxy_def`] (filled by `FLBPluginRegister`),
//!   [`flbgo_output_plugin`] (what `FLBPluginInit` receives: a *prefix* of Fluent Bit's
//!   structure), [`flb_plugin_proxy_context`] (holds `remote_context`), [`flb_api`]
//!   (Fluent Bit's services; `log_print` is a C variadic, which Rust can call but not
//!   define).
//! - Constants: `FLB_OK`, `FLB_RETRY`, `FLB_ERROR`, `FLB_PROXY_OUTPUT_PLUGIN`,
//!   `FLB_PROXY_GOLANG`, `FLB_LOG_*`, all `c_int`.
//! - Signatures of the exported symbols as function-pointer types
//!   (`FLBPluginRegister_t`, `FLBPluginFlushCtx_t`, ...). The functions themselves are
//!   not declared: the plugin defines them and a host finds them with `dlsym`.
//!
//! Everything is `#[repr(C)]` and checked by bindgen's layout assertions plus
//! `tests/layout.rs`.

#![no_std]

mod bindings {
    #![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]
    #![allow(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
    #![allow(unsafe_op_in_unsafe_fn)]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;
