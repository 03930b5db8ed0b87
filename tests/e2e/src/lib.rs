//! End-to-end test support for logferry.
//!
//! - [`host`]: a Fluent Bit host emulator that `dlopen`s the built plugin and drives it
//!   through the proxy ABI.
//! - [`fixtures_dir`], [`fixtures`]: the real Fluent Bit chunks in
//!   `shared/fixtures/fluent-bit-chunks/`, read in place.
//! - [`plugin_path`]: the `libout_logferry.so` of the build that runs the tests.
//!
//! The tests in `tests/` need the plugin built first: `cargo build --workspace`.

use std::path::{Path, PathBuf};

pub mod host;

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `shared/fixtures/fluent-bit-chunks`, beside the workspace; `LOGFERRY_FIXTURES`
/// overrides it.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOGFERRY_FIXTURES") {
        return PathBuf::from(dir);
    }
    workspace_root().join("../shared/fixtures/fluent-bit-chunks")
}

/// One real chunk captured from Fluent Bit.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The file stem, like `tail-raw-lines`.
    pub name: String,
    /// The tag Fluent Bit flushed it with.
    pub tag: String,
    /// The chunk's bytes, as `FLBPluginFlushCtx` received them.
    pub chunk: Vec<u8>,
    /// Its events decoded as JSON lines (`X.expected.jsonl`).
    pub expected_jsonl: PathBuf,
}

/// The tags of the fixtures, from the fixtures' README.
const FIXTURE_TAGS: &[(&str, &str)] = &[
    ("tail-raw-lines", "host.tail"),
    ("tail-json-parsed", "json.tail"),
    ("dummy-with-metadata", "app.dummy"),
    ("opentelemetry-with-group-markers", "otel.logs"),
    ("tail-large-14740-records", "big.tail"),
];

/// Every `*.msgpack` chunk in [`fixtures_dir`], by name.
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the fixtures in {} ({e}); set LOGFERRY_FIXTURES",
            dir.display()
        )
    });
    let mut fixtures: Vec<Fixture> = entries
        .map(|entry| entry.expect("readable fixtures dir").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "msgpack"))
        .map(|path| {
            let name = path
                .file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let tag = FIXTURE_TAGS
                .iter()
                .find(|(fixture, _)| *fixture == name)
                .map_or_else(|| format!("fixture.{name}"), |(_, tag)| tag.to_string());
            let chunk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Fixture {
                expected_jsonl: dir.join(format!("{name}.expected.jsonl")),
                name,
                tag,
                chunk,
            }
        })
        .collect();
    assert!(
        !fixtures.is_empty(),
        "no *.msgpack chunk in {}",
        dir.display()
    );
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}

/// The fixture called `name`.
pub fn fixture(name: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|fixture| fixture.name == name)
        .unwrap_or_else(|| panic!("no fixture `{name}` in {}", fixtures_dir().display()))
}

/// The built plugin, `libout_logferry.so`, in the target profile directory of the
/// running test binary (`target/debug` for `target/debug/deps/plugin_abi-...`);
/// `LOGFERRY_PLUGIN` overrides it.
pub fn plugin_path() -> PathBuf {
    const FILE: &str = "libout_logferry.so";
    if let Some(path) = std::env::var_os("LOGFERRY_PLUGIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(FILE))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{FILE} not found next to {} or its parents: run `cargo build --workspace` \
                 (same profile and CARGO_TARGET_DIR as the tests) first, or set LOGFERRY_PLUGIN",
                exe.display()
            )
        })
}
