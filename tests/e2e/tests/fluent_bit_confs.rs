//! The Fluent Bit configurations users copy, `fluent-bit-conf/*.conf` (the plugins file
//! aside) and `fluent-bit-conf/*.yaml`, checked without Fluent Bit.
//!
//! Each file is parsed (classic format or YAML), its `${VAR}` references are replaced
//! with test values, and every `[OUTPUT]` with `Name logferry` goes through the plugin's
//! own property parser, `AgentConfig::from_properties`, as `FLBPluginInit` would run it.
//! The files are also checked against each other (the `.conf` and `.yaml` of one host
//! kind) and against the Helm chart (the Kubernetes spool is the DaemonSet's hostPath).
//! No shipped config, these nor the image's and the chart's, sets `workers` on a
//! logferry output: Fluent Bit 5.1.1 crashes on a hot reload with it.
//!
//! A failure lists every problem found, each naming the file and the property.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use logferry_agent::config::{
    AgentConfig, ConfigError, Endpoint, PROPERTIES, TokenSource, alias_of,
};
use logferry_e2e::workspace_root;
use serde_yaml_ng::Value;

/// The host kinds that each need a `.conf` and a `.yaml`.
const HOST_KINDS: &[&str] = &["kubernetes", "systemd", "windows", "file"];

/// YAML configs without a `plugins:` list: they load the plugin with `fluent-bit -e`.
const LOADED_WITH_DASH_E: &[&str] = &["fluent-bit.yaml"];

/// `[OUTPUT]` properties that Fluent Bit reads itself and never passes to the plugin;
/// besides the plugin's own, the only ones a logferry output may carry.
const FLUENT_BIT_OUTPUT_PROPERTIES: &[&str] = &[
    "name",
    "match",
    "match_regex",
    "alias",
    "log_level",
    "retry_limit",
    "storage.total_limit_size",
];

/// Why no shipped logferry output may set `workers`.
const WORKERS_CRASH_HOT_RELOAD: &str = "remove it: Fluent Bit 5.1.1 starts an external output's worker pool twice and orphans \
     the first, whose threads crash Fluent Bit on a hot reload (README: \"Workers and hot \
     reload\")";

const ENDPOINT: &str = "https://127.0.0.1:7777";
const ACCESS_KEY: &str = "ak_test_fluent_bit_confs";

#[test]
fn every_logferry_output_passes_the_plugins_property_parser() {
    let env = TestEnv::new();
    let mut problems = Vec::new();
    for config in env.load_all(&mut problems) {
        let file = &config.name;
        if config.sections_of("INPUT").next().is_none() {
            problems.push(format!("{file}: has no input"));
        }
        for input in config.sections_of("INPUT") {
            let filesystem = input
                .get("storage.type")
                .is_some_and(|t| t.eq_ignore_ascii_case("filesystem"));
            if !filesystem {
                problems.push(format!(
                    "{file}: input `{}` lacks `storage.type filesystem`, so a Fluent Bit \
                     crash loses what it read before the plugin took it",
                    input.get("name").unwrap_or("?")
                ));
            }
        }
        let storage_path = config
            .sections_of("SERVICE")
            .find_map(|service| service.get("storage.path"));
        if storage_path.is_none_or(str::is_empty) {
            problems.push(format!(
                "{file}: the service section sets no `storage.path`"
            ));
        }

        let outputs: Vec<&Section> = config.logferry_outputs().collect();
        if outputs.is_empty() {
            problems.push(format!("{file}: has no output with `Name logferry`"));
        }
        for output in outputs {
            problems.extend(check_logferry_output(file, output));
        }
    }
    assert_no_problems(&problems);
}

/// Every config logferry ships: `fluent-bit-conf/`, the image's (which the compose
/// file runs) and the Helm chart's agent config. None sets `workers` on a logferry
/// output, in any spelling.
#[test]
fn no_shipped_config_sets_workers_on_a_logferry_output() {
    let env = TestEnv::new();
    let mut problems = Vec::new();
    let mut configs = env.load_all(&mut problems);
    let root = workspace_root();
    // The compose file's Fluent Bit services run the image the Dockerfile builds, whose
    // config is this file.
    let dockerfile = read(&root.join("Dockerfile"));
    assert!(
        dockerfile.contains("COPY deploy/docker/fluent-bit.conf /fluent-bit/etc/logferry.conf"),
        "the Dockerfile no longer bakes deploy/docker/fluent-bit.conf into the image"
    );
    let compose = read(&root.join("examples/compose.yaml"));
    assert_eq!(
        compose.matches("image: logferry-fluent-bit:dev").count(),
        2,
        "examples/compose.yaml: both Fluent Bit services run the image's config"
    );
    assert!(
        !compose.contains("/fluent-bit/etc"),
        "examples/compose.yaml mounts something over the image's config; check it here"
    );
    for path in ["deploy/docker/fluent-bit.conf", CHART_AGENT_CONFIG] {
        let text = read(&root.join(path));
        let text = if path == CHART_AGENT_CONFIG {
            chart_fluent_bit_conf(&text)
        } else {
            text
        };
        match parse_classic_text(path, &text, &root.join(path), &mut env.vars.clone()) {
            Ok(sections) => configs.push(ConfigFile {
                name: path.to_string(),
                sections,
                plugins: None,
            }),
            Err(e) => problems.push(e),
        }
    }
    assert_eq!(
        configs.len(),
        12,
        "10 in fluent-bit-conf/, the image's and the chart's"
    );
    for config in &configs {
        let outputs: Vec<&Section> = config.logferry_outputs().collect();
        if outputs.is_empty() {
            problems.push(format!(
                "{}: has no output with `Name logferry`",
                config.name
            ));
        }
        for output in outputs {
            if output.properties.iter().any(|(key, _)| key == "workers") {
                problems.push(format!(
                    "{}: logferry output: property `workers`: {WORKERS_CRASH_HOT_RELOAD}",
                    config.name
                ));
            }
        }
    }
    assert_no_problems(&problems);
}

/// The Helm chart's template of the agent's Fluent Bit config.
const CHART_AGENT_CONFIG: &str = "deploy/helm/logferry/templates/agent-configmap.yaml";

/// The `fluent-bit.conf: |` block of the chart's ConfigMap template, dedented, without
/// its template-only lines (`{{- if ... }}`). Values stay as written (`{{ .Values... }}`):
/// only property names are checked.
fn chart_fluent_bit_conf(template: &str) -> String {
    let mut lines = template.lines();
    let header = lines
        .by_ref()
        .position(|line| line.trim() == "fluent-bit.conf: |");
    assert!(
        header.is_some(),
        "{CHART_AGENT_CONFIG}: no `fluent-bit.conf: |` block"
    );
    let mut block = String::new();
    for line in lines {
        if line.starts_with("{{") {
            break;
        }
        let line = line.trim();
        if !line.starts_with("{{") {
            block.push_str(line);
            block.push('\n');
        }
    }
    block
}

#[test]
fn yaml_configs_load_the_plugin_library() {
    let env = TestEnv::new();
    let mut problems = Vec::new();
    let configs = env.load_all(&mut problems);
    for config in configs.iter().filter(|c| c.name.ends_with(".yaml")) {
        let file = &config.name;
        // A Windows build of the cdylib is named without the `lib` prefix.
        let library = match config.stem() {
            "windows" => "out_logferry.dll",
            _ => "libout_logferry.so",
        };
        match &config.plugins {
            None if LOADED_WITH_DASH_E.contains(&file.as_str()) => {}
            None => problems.push(format!("{file}: no `plugins:` list loading {library}")),
            Some(entries) if entries.is_empty() => problems.push(format!(
                "{file}: `plugins:` is empty; it should load {library}"
            )),
            Some(entries) => {
                for entry in entries {
                    let loaded = entry.rsplit(['/', '\\']).next().unwrap_or(entry);
                    if loaded != library {
                        problems.push(format!(
                            "{file}: `plugins:` entry `{entry}` is not {library}"
                        ));
                    }
                }
            }
        }
    }
    assert_no_problems(&problems);
}

#[test]
fn conf_and_yaml_of_a_host_kind_agree() {
    let env = TestEnv::new();
    let mut problems = Vec::new();
    let configs = env.load_all(&mut problems);
    for kind in HOST_KINDS {
        for extension in ["conf", "yaml"] {
            let name = format!("{kind}.{extension}");
            if !conf_dir().join(&name).is_file() {
                problems.push(format!("fluent-bit-conf/{name} is missing"));
            }
        }
    }
    let by_name: HashMap<&str, &ConfigFile> =
        configs.iter().map(|c| (c.name.as_str(), c)).collect();
    for conf in configs.iter().filter(|c| c.name.ends_with(".conf")) {
        if let Some(yaml) = by_name.get(format!("{}.yaml", conf.stem()).as_str()) {
            compare_variants(conf, yaml, &mut problems);
        }
    }
    assert_no_problems(&problems);
}

#[test]
fn kubernetes_config_uses_the_charts_host_paths() {
    let chart = workspace_root().join("deploy/helm/logferry");
    let values: Value = serde_yaml_ng::from_str(&read(&chart.join("values.yaml")))
        .expect("the chart's values.yaml parses");
    let value = |keys: &[&str]| -> String {
        let mut node = &values;
        for key in keys {
            node = node
                .get(*key)
                .unwrap_or_else(|| panic!("values.yaml has no `{}`", keys.join(".")));
        }
        let text = node.as_str();
        text.unwrap_or_else(|| panic!("values.yaml: `{}` is not a string", keys.join(".")))
            .to_string()
    };
    let spool_host_path = value(&["agent", "spool", "hostPath"]);
    let spool_mount_path = value(&["agent", "spool", "path"]);
    let state_mount_path = value(&["agent", "state", "path"]);

    // The DaemonSet mounts the hostPath volume `agent.spool.hostPath` at
    // `agent.spool.path`, and Fluent Bit's state likewise.
    let daemonset = read(&chart.join("templates/agent-daemonset.yaml"));
    for wiring in [
        "path: {{ .Values.agent.spool.hostPath }}",
        "mountPath: {{ .Values.agent.spool.path }}",
        "path: {{ .Values.agent.state.hostPath }}",
        "mountPath: {{ .Values.agent.state.path }}",
    ] {
        assert!(
            daemonset.contains(wiring),
            "agent-daemonset.yaml no longer has `{wiring}`; this test reads the spool and \
             state paths from values.yaml on that assumption"
        );
    }
    assert_eq!(
        spool_host_path, spool_mount_path,
        "the chart mounts the spool hostPath at another path in the pod; kubernetes.conf \
         says they are the same"
    );

    let env = TestEnv::new();
    for name in ["kubernetes.conf", "kubernetes.yaml"] {
        let config = env
            .load(&conf_dir().join(name))
            .unwrap_or_else(|e| panic!("{e}"));
        let outputs: Vec<&Section> = config.logferry_outputs().collect();
        assert_eq!(outputs.len(), 1, "{name}: one logferry output");
        let output = outputs[0];
        assert_eq!(
            output.get("buffer.path"),
            Some(spool_mount_path.as_str()),
            "{name}: buffer.path must be the spool hostPath the chart's DaemonSet mounts \
             ({spool_host_path})"
        );

        // Fluent Bit's storage and the tail offsets on the state hostPath.
        let storage_path = config
            .sections_of("SERVICE")
            .find_map(|service| service.get("storage.path"));
        let tail_db = config
            .sections_of("INPUT")
            .find(|input| input.get("name") == Some("tail"))
            .and_then(|tail| tail.get("db"));
        for (property, path) in [("storage.path", storage_path), ("tail db", tail_db)] {
            assert!(
                path.is_some_and(|p| Path::new(p).starts_with(&state_mount_path)),
                "{name}: {property} {path:?} is not under the chart's state hostPath \
                 {state_mount_path}"
            );
        }

        // The token comes from a file the kubelet updates, so rotation needs no restart.
        assert_eq!(
            output.get("access_token"),
            None,
            "{name}: no inline access_token"
        );
        let config = agent_config(output).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            config.token,
            TokenSource::File(env.token_file.clone()),
            "{name}: the token comes from access_token_file"
        );
    }
}

/// Checks one logferry output as `FLBPluginInit` would see it; returns what is wrong.
fn check_logferry_output(file: &str, output: &Section) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (key, _) in &output.properties {
        if !seen.insert(key) {
            problems.push(format!(
                "{file}: logferry output: property `{key}` is set twice"
            ));
        }
        if let Err(why) = check_property_name(key) {
            problems.push(format!("{file}: logferry output: property `{key}`: {why}"));
        }
    }
    if output.get("match").is_none_or(str::is_empty) {
        problems.push(format!("{file}: logferry output: no `Match`"));
    }
    match agent_config(output) {
        Err(e) => problems.push(format!("{file}: logferry output: {e}")),
        Ok(config) => {
            // The variables arrived where the plugin reads them.
            if config.endpoint != Endpoint::parse(ENDPOINT).unwrap() {
                problems.push(format!(
                    "{file}: logferry output: endpoint is {}, not ${{LOGFERRY_ENDPOINT}}",
                    config.endpoint
                ));
            }
            if config.access_key != ACCESS_KEY {
                problems.push(format!(
                    "{file}: logferry output: access_key is `{}`, not ${{LOGFERRY_ACCESS_KEY}}",
                    config.access_key
                ));
            }
        }
    }
    problems
}

/// Whether `key` belongs in a logferry output, spelled as a Fluent Bit config must.
fn check_property_name(key: &str) -> Result<(), String> {
    if FLUENT_BIT_OUTPUT_PROPERTIES.contains(&key) {
        return Ok(());
    }
    if key == "workers" {
        return Err(WORKERS_CRASH_HOT_RELOAD.to_string());
    }
    if let Some(alias) = alias_of(key) {
        return Err(format!(
            "write `{alias}`: Fluent Bit keeps tls.ca_file, tls.crt_file, tls.key_file and \
             tls.verify for its own TLS layer and never passes them to the plugin, so the \
             configs spell every TLS property with an underscore"
        ));
    }
    // The plugin's properties as a Fluent Bit config spells them.
    let plugin: Vec<&str> = PROPERTIES
        .iter()
        .map(|p| alias_of(p.name).unwrap_or(p.name))
        .collect();
    if plugin.contains(&key) {
        Ok(())
    } else {
        Err(format!(
            "unknown; Fluent Bit's own are {} and the plugin's are {}",
            FLUENT_BIT_OUTPUT_PROPERTIES.join(", "),
            plugin.join(", ")
        ))
    }
}

/// Runs the plugin's parser on what Fluent Bit would hand it: the output's properties
/// without those Fluent Bit keeps, looked up case-insensitively.
fn agent_config(output: &Section) -> Result<AgentConfig, ConfigError> {
    let properties: HashMap<&str, &str> = output
        .properties
        .iter()
        .filter(|(key, _)| !FLUENT_BIT_OUTPUT_PROPERTIES.contains(&key.as_str()))
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    AgentConfig::from_properties(|key| {
        properties
            .get(key.to_ascii_lowercase().as_str())
            .map(|value| value.to_string())
    })
}

/// The `.conf` and `.yaml` of one host kind: the same logferry outputs, property for
/// property, and the same inputs and filters.
fn compare_variants(conf: &ConfigFile, yaml: &ConfigFile, problems: &mut Vec<String>) {
    let pair = format!("{} and {}", conf.name, yaml.name);
    let outputs = |config: &ConfigFile| -> Vec<BTreeMap<String, String>> {
        config
            .logferry_outputs()
            .map(|output| output.properties.iter().cloned().collect())
            .collect()
    };
    let (conf_outputs, yaml_outputs) = (outputs(conf), outputs(yaml));
    if conf_outputs.len() != yaml_outputs.len() {
        problems.push(format!(
            "{pair}: {} and {} logferry outputs",
            conf_outputs.len(),
            yaml_outputs.len()
        ));
    }
    for (index, (a, b)) in conf_outputs.iter().zip(&yaml_outputs).enumerate() {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for key in keys {
            let (in_conf, in_yaml) = (a.get(key), b.get(key));
            if in_conf != in_yaml {
                problems.push(format!(
                    "{pair}: logferry output #{}: property `{key}` is {} in the .conf and {} \
                     in the .yaml",
                    index + 1,
                    shown(in_conf),
                    shown(in_yaml)
                ));
            }
        }
    }
    let names = |config: &ConfigFile, kind: &str| -> Vec<String> {
        config
            .sections_of(kind)
            .map(|section| section.get("name").unwrap_or("").to_ascii_lowercase())
            .collect()
    };
    for kind in ["INPUT", "FILTER"] {
        let (in_conf, in_yaml) = (names(conf, kind), names(yaml, kind));
        if in_conf != in_yaml {
            problems.push(format!(
                "{pair}: {kind} plugins differ: {in_conf:?} in the .conf, {in_yaml:?} in the \
                 .yaml"
            ));
        }
    }
}

fn shown(value: Option<&String>) -> String {
    match value {
        Some(value) => format!("`{value}`"),
        None => "unset".to_string(),
    }
}

fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s) in fluent-bit-conf/:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// Values for the `${VAR}` references, and the files they name, in a temp dir.
struct TestEnv {
    _dir: tempfile::TempDir,
    vars: HashMap<String, String>,
    token_file: PathBuf,
}

impl TestEnv {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        fs::write(&token_file, "test-token-from-file\n").unwrap();
        // The property parser only checks that the CA file exists.
        let ca_file = dir.path().join("ca.pem");
        fs::write(&ca_file, "test CA\n").unwrap();
        let spool_dir = dir.path().join("spool");
        let text = |path: &Path| path.to_str().unwrap().to_string();
        let vars = [
            ("LOGFERRY_ENDPOINT", ENDPOINT.to_string()),
            ("LOGFERRY_ACCESS_KEY", ACCESS_KEY.to_string()),
            ("LOGFERRY_ACCESS_TOKEN", "test-token-inline".to_string()),
            ("LOGFERRY_ACCESS_TOKEN_FILE", text(&token_file)),
            ("LOGFERRY_CA_FILE", text(&ca_file)),
            ("LOGFERRY_TLS_SERVER_NAME", "logferry.test".to_string()),
            ("LOGFERRY_SPOOL_DIR", text(&spool_dir)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        Self {
            _dir: dir,
            vars,
            token_file,
        }
    }

    /// Every config in [`conf_dir`]; a file that does not parse becomes a problem.
    fn load_all(&self, problems: &mut Vec<String>) -> Vec<ConfigFile> {
        let mut configs = Vec::new();
        for path in config_paths() {
            match self.load(&path) {
                Ok(config) => configs.push(config),
                Err(e) => problems.push(e),
            }
        }
        configs
    }

    fn load(&self, path: &Path) -> Result<ConfigFile, String> {
        let name = file_name(path).to_string();
        let (sections, plugins) = if name.ends_with(".yaml") {
            parse_yaml(&read(path), &self.vars).map_err(|e| format!("{name}: {e}"))?
        } else {
            (parse_classic(path, &mut self.vars.clone())?, None)
        };
        Ok(ConfigFile {
            name,
            sections,
            plugins,
        })
    }
}

/// One parsed config file, with its `${VAR}`s replaced.
struct ConfigFile {
    /// The file name, like `kubernetes.conf`.
    name: String,
    sections: Vec<Section>,
    /// The YAML `plugins:` list, if there is one.
    plugins: Option<Vec<String>>,
}

impl ConfigFile {
    /// The host kind: `kubernetes` for `kubernetes.conf`.
    fn stem(&self) -> &str {
        self.name
            .rsplit_once('.')
            .map_or(self.name.as_str(), |(stem, _)| stem)
    }

    fn sections_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Section> {
        self.sections.iter().filter(move |s| s.kind == kind)
    }

    fn logferry_outputs(&self) -> impl Iterator<Item = &Section> {
        self.sections_of("OUTPUT").filter(|output| {
            output
                .get("name")
                .is_some_and(|name| name.eq_ignore_ascii_case("logferry"))
        })
    }
}

/// A classic section (`[INPUT]` ...) or a YAML pipeline entry.
struct Section {
    /// `SERVICE`, `INPUT`, `FILTER` or `OUTPUT`.
    kind: String,
    /// Keys lower-cased (Fluent Bit matches them case-insensitively), in file order.
    properties: Vec<(String, String)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// The classic format: `[SECTION]` headers, `key value` lines, `#` comments,
/// `@SET NAME=VALUE` and `@INCLUDE FILE` (relative to the including file).
fn parse_classic(path: &Path, vars: &mut HashMap<String, String>) -> Result<Vec<Section>, String> {
    let name = file_name(path);
    let text = fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    parse_classic_text(name, &text, path, vars)
}

/// [`parse_classic`] of `text`, named `name` in errors; `@INCLUDE`s are relative to
/// `path`.
fn parse_classic_text(
    name: &str,
    text: &str,
    path: &Path,
    vars: &mut HashMap<String, String>,
) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let at = |message: String| format!("{name}:{}: {message}", index + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("@SET ") {
            let (variable, value) = assignment
                .split_once('=')
                .ok_or_else(|| at(format!("`{line}` is not `@SET NAME=VALUE`")))?;
            let value = substitute(value.trim(), vars).map_err(at)?;
            vars.insert(variable.trim().to_string(), value);
        } else if let Some(included) = line.strip_prefix("@INCLUDE ") {
            let included = path.with_file_name(included.trim());
            sections.extend(parse_classic(&included, vars)?);
        } else if line.starts_with('@') {
            return Err(at(format!("unknown directive `{line}`")));
        } else if let Some(kind) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push(Section {
                kind: kind.trim().to_ascii_uppercase(),
                properties: Vec::new(),
            });
        } else {
            let section = sections
                .last_mut()
                .ok_or_else(|| at(format!("`{line}` is outside any section")))?;
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = substitute(value.trim(), vars).map_err(at)?;
            section.properties.push((key.to_ascii_lowercase(), value));
        }
    }
    Ok(sections)
}

type ParsedYaml = (Vec<Section>, Option<Vec<String>>);

/// Fluent Bit's YAML format: `service:`, `plugins:` and `pipeline:` with `inputs`,
/// `filters` and `outputs` lists.
fn parse_yaml(text: &str, vars: &HashMap<String, String>) -> Result<ParsedYaml, String> {
    let document: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let mut sections = Vec::new();
    if let Some(service) = document.get("service") {
        sections.push(yaml_section("SERVICE", service, vars)?);
    }
    let pipeline = document.get("pipeline").ok_or("no `pipeline:`")?;
    for (list, kind) in [
        ("inputs", "INPUT"),
        ("filters", "FILTER"),
        ("outputs", "OUTPUT"),
    ] {
        let Some(entries) = pipeline.get(list) else {
            continue;
        };
        let entries = entries
            .as_sequence()
            .ok_or_else(|| format!("`pipeline.{list}` is not a list"))?;
        for entry in entries {
            sections.push(yaml_section(kind, entry, vars)?);
        }
    }
    let plugins = match document.get("plugins") {
        None => None,
        Some(list) => {
            let entries = list.as_sequence().ok_or("`plugins:` is not a list")?;
            let paths = entries.iter().map(|entry| {
                entry
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`plugins:` entry {entry:?} is not a path"))
            });
            Some(paths.collect::<Result<Vec<_>, _>>()?)
        }
    };
    Ok((sections, plugins))
}

/// One YAML mapping as a section. Values are read as Fluent Bit reads them, as text;
/// nested ones (`processors:`) are not properties and are left out.
fn yaml_section(
    kind: &str,
    entry: &Value,
    vars: &HashMap<String, String>,
) -> Result<Section, String> {
    let mapping = entry
        .as_mapping()
        .ok_or_else(|| format!("a {kind} entry is not a mapping"))?;
    let mut properties = Vec::new();
    for (key, value) in mapping.iter() {
        let key = key
            .as_str()
            .ok_or_else(|| format!("{kind} key {key:?} is not a string"))?
            .to_ascii_lowercase();
        let value = match value {
            Value::String(text) => text.clone(),
            Value::Bool(flag) => flag.to_string(),
            Value::Number(number) => number.to_string(),
            Value::Null => String::new(),
            _ => continue,
        };
        let value = substitute(&value, vars).map_err(|e| format!("{kind} `{key}`: {e}"))?;
        properties.push((key, value));
    }
    Ok(Section {
        kind: kind.to_string(),
        properties,
    })
}

/// Replaces each `${NAME}`. Fluent Bit makes an unset variable empty; here a name the
/// test does not set is an error, so a misspelt variable cannot pass unnoticed.
fn substitute(value: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut replaced = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        replaced.push_str(&rest[..start]);
        let reference = &rest[start + 2..];
        let end = reference
            .find('}')
            .ok_or_else(|| format!("`{value}` has an unclosed `${{`"))?;
        let variable = &reference[..end];
        let known = vars
            .get(variable)
            .ok_or_else(|| format!("`${{{variable}}}` is not a variable the test sets"))?;
        replaced.push_str(known);
        rest = &reference[end + 1..];
    }
    replaced.push_str(rest);
    Ok(replaced)
}

/// `fluent-bit-conf/` in the workspace.
fn conf_dir() -> PathBuf {
    workspace_root().join("fluent-bit-conf")
}

/// Every `*.conf` in [`conf_dir`] but the plugins file, and every `*.yaml`, sorted.
fn config_paths() -> Vec<PathBuf> {
    let dir = conf_dir();
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| match path.extension().and_then(|e| e.to_str()) {
            Some("conf") => file_name(path) != "plugins.conf",
            Some("yaml") => true,
            _ => false,
        })
        .collect();
    paths.sort();
    paths
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
