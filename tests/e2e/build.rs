//! Compiles the test host's C `log_print` (a variadic function Rust cannot define).

fn main() {
    println!("cargo:rerun-if-changed=csrc/log_print.c");
    cc::Build::new()
        .file("csrc/log_print.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("logferry_e2e_log_print");
}
