//! The structures must match Fluent Bit's C layout byte for byte (64-bit targets).

#![cfg(target_pointer_width = "64")]

use core::mem::{offset_of, size_of};

use fluent_bit_sys::*;

#[test]
fn proxy_def_layout() {
    assert_eq!(offset_of!(flb_plugin_proxy_def, type_), 0);
    assert_eq!(offset_of!(flb_plugin_proxy_def, proxy), 4);
    assert_eq!(offset_of!(flb_plugin_proxy_def, flags), 8);
    assert_eq!(offset_of!(flb_plugin_proxy_def, name), 16);
    assert_eq!(offset_of!(flb_plugin_proxy_def, description), 24);
    assert_eq!(offset_of!(flb_plugin_proxy_def, event_type), 32);
    assert_eq!(offset_of!(flb_plugin_proxy_def, config_map), 40);
    assert_eq!(size_of::<flb_plugin_proxy_def>(), 48);
}

#[test]
fn output_plugin_layout() {
    assert_eq!(offset_of!(flbgo_output_plugin, reserved), 0);
    assert_eq!(offset_of!(flbgo_output_plugin, api), 8);
    assert_eq!(offset_of!(flbgo_output_plugin, o_ins), 16);
    assert_eq!(offset_of!(flbgo_output_plugin, context), 24);
    assert_eq!(size_of::<flbgo_output_plugin>(), 32);
}

#[test]
fn proxy_context_layout() {
    assert_eq!(offset_of!(flb_plugin_proxy_context, remote_context), 0);
    assert_eq!(offset_of!(flb_plugin_proxy_context, reserved), 8);
    assert_eq!(size_of::<flb_plugin_proxy_context>(), 16);
}

#[test]
fn api_layout() {
    assert_eq!(offset_of!(flb_api, output_get_property), 0);
    assert_eq!(offset_of!(flb_api, input_get_property), 8);
    assert_eq!(offset_of!(flb_api, output_get_cmt_instance), 16);
    assert_eq!(offset_of!(flb_api, input_get_cmt_instance), 24);
    assert_eq!(offset_of!(flb_api, log_print), 32);
    assert_eq!(offset_of!(flb_api, input_log_check), 40);
    assert_eq!(offset_of!(flb_api, output_log_check), 48);
    assert_eq!(size_of::<flb_api>(), 56);
    // The typedefs are `Option<fn>`: nullable function pointers, NULL reads as `None`.
    assert_eq!(size_of::<FLBPluginInit_t>(), size_of::<usize>());
}

#[test]
fn constants() {
    assert_eq!((FLB_ERROR, FLB_OK, FLB_RETRY), (0, 1, 2));
    assert_eq!((FLB_PROXY_OUTPUT_PLUGIN, FLB_PROXY_GOLANG), (2, 11));
    assert_eq!(
        (
            FLB_LOG_ERROR,
            FLB_LOG_WARN,
            FLB_LOG_INFO,
            FLB_LOG_DEBUG,
            FLB_LOG_TRACE
        ),
        (1, 2, 3, 4, 5)
    );
    let _: core::ffi::c_int = FLB_OK;
}

#[test]
fn defaults_are_zeroed() {
    let def = flb_plugin_proxy_def::default();
    assert_eq!(
        (def.type_, def.proxy, def.flags, def.event_type),
        (0, 0, 0, 0)
    );
    assert!(def.name.is_null() && def.description.is_null() && def.config_map.is_null());
    let api = flb_api::default();
    assert!(api.log_print.is_none() && api.output_get_property.is_none());
}
