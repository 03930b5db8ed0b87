//! docs/configuration.md is what `logferry config-reference` prints today: every
//! plugin property and every flag, from the code's doc comments.

use logferry_e2e::backend::backend_bin;
use logferry_e2e::workspace_root;

#[test]
fn the_committed_configuration_reference_is_current() {
    let output = std::process::Command::new(backend_bin())
        .arg("config-reference")
        .output()
        .unwrap();
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).unwrap();
    let path = workspace_root().join("docs/configuration.md");
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        generated == committed,
        "{} is out of date; regenerate it with\n  cargo run -q -p logferry-backend -- \
         config-reference > docs/configuration.md",
        path.display()
    );
    // Every property and every serve flag is in it.
    for property in logferry_agent::PROPERTIES {
        assert!(
            committed.contains(&format!("| `{}`", property.name)),
            "{}",
            property.name
        );
    }
    for flag in [
        "--tls-client-ca",
        "--agent-silence-after",
        "--revoked-tokens",
    ] {
        assert!(committed.contains(&format!("| `{flag}`")), "{flag}");
    }
}
