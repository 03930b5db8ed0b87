//! Generates the gRPC contract from `proto/` with tonic-prost-build. `protoc` comes
//! from the vendored binary, so a fresh machine needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: `set_var` is unsafe because another thread may read the environment at
    // the same time. This build script is single threaded and has spawned nothing yet;
    // prost-build reads `PROTOC` afterwards on this same thread.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .bytes(".logferry.v1.Batch.payload")
        .bytes(".logferry.v1.Chunk.data")
        .compile_protos(&["proto/logferry/v1/logferry.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
