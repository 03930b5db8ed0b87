//! Generates the Rust bindings of `include/fluent_bit_proxy.h` with bindgen into
//! `OUT_DIR/bindings.rs`. The header is ours (written from the ABI facts), so the
//! bindings are regenerated on every build that changes it; nothing is checked in.

use std::env;
use std::path::PathBuf;

fn main() {
    let header = "include/fluent_bit_proxy.h";
    println!("cargo:rerun-if-changed={header}");

    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("flb_plugin_proxy_def")
        .allowlist_type("flb_plugin_proxy_context")
        .allowlist_type("flbgo_output_plugin")
        .allowlist_type("flb_api")
        .allowlist_type("FLBPlugin.*_t")
        .allowlist_var("FLB_.*")
        // The exported functions are defined by the plugin and looked up by name by a
        // host; neither side links against them, so no `extern` block is generated.
        // Their signatures are available as the `FLBPlugin*_t` typedefs.
        .default_macro_constant_type(bindgen::MacroTypeVariation::Signed)
        .derive_debug(true)
        .derive_default(true)
        .impl_debug(false)
        .layout_tests(true)
        .use_core()
        .generate_comments(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed on include/fluent_bit_proxy.h");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("cannot write bindings.rs");
}
