//! Generates the gRPC contract from `proto/` with tonic-prost-build. `protoc` comes
//! from the vendored binary, so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single threaded; prost-build reads PROTOC.
    // `set_var` is unsafe in edition 2024 because other threads may read the
    // environment; none exist here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".logferry.v1.Batch.payload")
        .bytes(".logferry.v1.Chunk.data")
        .compile_protos(&["proto/logferry/v1/logferry.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
