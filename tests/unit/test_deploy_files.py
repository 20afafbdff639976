"""Deployment files checked without Docker or a cluster: docker-compose.yml, the Dockerfile, the
Kubernetes manifests (official schemas via kubernetes-validate, KEDA by its documented fields) and
the Grafana dashboard, against the code they deploy (CLI parser, settings, exported metrics)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stream_detector.cli import build_parser
from stream_detector.metrics import DEFAULT_PORT, WorkerMetrics
from stream_detector.settings import Settings
from tests.helpers import ROOT

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33.0"
SETTINGS = {f"SD_{name.upper()}" for name in Settings.model_fields}
OUR_IMAGE = re.compile(r"(^|/)stream-detector(:|$)")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _ours(service: dict[str, Any]) -> bool:
    return "build" in service or bool(OUR_IMAGE.search(str(service.get("image", ""))))


def _cli_invocations(service: dict[str, Any]) -> list[list[str]]:
    """The stream-detector argument lists a service runs (entrypoint stream-detector, or sh -c)."""
    command = service.get("command", ["worker"])
    if service.get("entrypoint") == ["sh", "-c"]:
        script = " ".join(command)
        return [shlex.split(part)[1:] for part in re.split(r"&&|;", script)
                if shlex.split(part)[0] == "stream-detector"]
    assert "entrypoint" not in service, "our image's entrypoint is stream-detector"
    return [list(command)]


def test_compose_commands_are_real_subcommands_with_valid_arguments():
    services = _compose()["services"]
    ours = {name: s for name, s in services.items() if _ours(s)}
    assert {"topics", "trainer", "worker-1", "worker-2", "retrainer", "simulator", "console"} <= set(ours)
    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    seen = set()
    for name, service in ours.items():
        for argv in _cli_invocations(service):
            assert argv and argv[0] in subcommands, f"{name}: {argv}"
            parser.parse_args(argv)  # exits (fails the test) on an unknown option or bad value
            seen.add(argv[0])
    assert {"worker", "retrain", "simulate", "train", "publish", "topics", "console"} <= seen


def test_compose_environment_names_only_real_settings():
    for name, service in _compose()["services"].items():
        if not _ours(service):
            continue
        env = service.get("environment", {})
        assert isinstance(env, dict), name
        unknown = set(env) - SETTINGS
        assert not unknown, f"{name}: {unknown} are not settings"
        Settings(**{k[3:].lower(): v for k, v in env.items()})  # and their values validate


def test_compose_workers_have_distinct_ids_and_metrics_ports_prometheus_scrapes():
    services = _compose()["services"]
    workers = {n: s for n, s in services.items() if _ours(s) and s.get("command") == ["worker"]}
    assert len(workers) == 2
    assert len({s["environment"]["SD_WORKER_ID"] for s in workers.values()}) == 2
    for s in workers.values():
        assert s["environment"]["SD_METRICS_PORT"] == str(DEFAULT_PORT)
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for c in scrape["scrape_configs"] for sc in c["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{DEFAULT_PORT}" for n in workers}


def test_compose_referenced_files_exist():
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        for dep in service.get("depends_on", {}):
            assert dep in _compose()["services"], f"{name} depends on unknown {dep}"


def _dockerfile_copies(path: Path) -> list[str]:
    sources = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    return sources


def test_dockerfile_copies_existing_sources_runs_unprivileged_in_two_stages():
    path = ROOT / "deploy" / "Dockerfile"
    sources = _dockerfile_copies(path)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source  # the build context is the repository root
    text = path.read_text()
    assert len(re.findall(r"(?m)^FROM ", text)) >= 2, "multi-stage"
    users = re.findall(r"(?m)^USER (\S+)", text)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"(?m)^ENTRYPOINT \[\"stream-detector\"\]", text)
    assert "ARG TORCH_INDEX" in text and "ARG DEVICE" in text, "the CUDA variant is a build argument"
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if not ln.startswith("#")]
    assert not {"stream_detector", "pyproject.toml", "README.md"} & set(ignored)


# ---- Kubernetes ------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _manifests() if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    return doc


def test_core_manifests_validate_against_the_kubernetes_schemas():
    validated = set()
    for doc in _manifests():
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # strict: unknown fields fail
        validated.add(doc["kind"])
    assert {"ConfigMap", "Secret", "Deployment", "PodDisruptionBudget"} <= validated


def test_the_schema_check_catches_a_misspelt_field():
    deployment = _one("Deployment", "stream-detector-worker")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    (kustomization,) = _by_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def _config() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", "stream-detector-config")["data"]
    return data


def test_configmap_and_secret_hold_only_valid_settings():
    secret = _one("Secret", "stream-detector-secrets")["stringData"]
    combined = {**_config(), **secret}
    assert set(combined) <= SETTINGS, set(combined) - SETTINGS
    settings = Settings(**{k[3:].lower(): v for k, v in combined.items()})
    assert settings.kafka_security()["security_protocol"] == "SASL_SSL"
    assert settings.redis_url.startswith("rediss://"), "Redis over TLS"
    assert "@" not in settings.redis_url and settings.redis_password.get_secret_value(), "password from the Secret"
    assert not set(secret) & set(_config()), "a credential never sits in the ConfigMap"


def _container(name: str) -> dict[str, Any]:
    container: dict[str, Any] = _one("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_worker_probes_scrape_annotations_and_env_match_the_metrics_server():
    deployment = _one("Deployment", "stream-detector-worker")
    pod = deployment["spec"]["template"]
    container = _container("stream-detector-worker")
    port = int(_config()["SD_METRICS_PORT"])
    assert port == DEFAULT_PORT
    assert container["args"] == ["worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", port)
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"
    env_names = {e["name"] for e in container["env"]}
    assert "SD_WORKER_ID" in env_names and env_names <= SETTINGS
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30


def test_retrainer_runs_the_retrain_subcommand_alone():
    deployment = _one("Deployment", "stream-detector-retrainer")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    args = _container("stream-detector-retrainer")["args"]
    build_parser().parse_args(args)
    assert args[0] == "retrain"
    assert {e["name"] for e in _container("stream-detector-retrainer")["env"]} <= SETTINGS


def test_pdb_selects_the_worker_pods():
    pdb = _one("PodDisruptionBudget", "stream-detector-worker")
    labels = _one("Deployment", "stream-detector-worker")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_scaledobject_scales_the_workers_on_their_group_lag_up_to_the_partitions():
    # Required fields per KEDA's ScaledObject spec and Kafka scaler documentation.
    (scaled,) = _by_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                         "cooldownPeriod", "idleReplicaCount", "initialCooldownPeriod", "fallback",
                         "advanced", "triggers"}
    target = spec["scaleTargetRef"]
    assert target["name"] == "stream-detector-worker" and target.get("kind", "Deployment") == "Deployment"
    config = _config()
    assert spec["maxReplicaCount"] == int(config["SD_TOPIC_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(meta)
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert meta["bootstrapServers"] == config["SD_KAFKA_BOOTSTRAP"]
    assert meta["consumerGroup"] == config["SD_GROUP_ID"] and meta["topic"] == config["SD_INPUT_TOPIC"]
    assert int(meta["lagThreshold"]) > 0
    assert meta["offsetResetPolicy"] == Settings().auto_offset_reset
    assert meta.get("allowIdleConsumers", "false") == "false"
    (auth,) = _by_kind("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {p["parameter"]: p for p in auth["spec"]["secretTargetRef"]}
    assert {"sasl", "username", "password", "tls"} <= set(params)
    keda_secret = _one("Secret", params["sasl"]["name"])["stringData"]
    assert all(p["key"] in keda_secret for p in params.values())
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert keda_secret["sasl"] == keda_sasl[config["SD_KAFKA_SASL_MECHANISM"]]
    assert keda_secret["tls"] == ("enable" if config["SD_KAFKA_SECURITY_PROTOCOL"].endswith("SSL") else "disable")


# ---- Grafana ---------------------------------------------------------------------------------


def _exported_series() -> set[str]:
    """Every series name a worker's /metrics can carry (with the suffixes of each metric type)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",),
                "gauge": ("",), "summary": ("", "_count", "_sum")}
    names = set()
    for family in WorkerMetrics(Settings()).registry.collect():
        names |= {family.name + s for s in suffixes[family.type]}
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "stream-detector.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_every_metric_the_dashboard_queries_is_exported():
    exported = _exported_series()
    queried = {m for e in _dashboard_exprs() for m in re.findall(r"\bstream_detector_[a-z_]+", e)}
    assert len(queried) >= 15
    assert queried <= exported, queried - exported
    core = {"stream_detector_events_consumed_total", "stream_detector_alerts_total",
            "stream_detector_batch_latency_seconds_bucket", "stream_detector_consumer_lag_records",
            "stream_detector_events_rejected_total", "stream_detector_event_to_alert_latency_seconds_bucket"}
    assert core <= queried


def test_dashboard_provisioning_points_at_the_dashboard_file():
    compose = _compose()["services"]["grafana"]["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/stream-detector.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(v.startswith("./deploy/grafana/stream-detector.json:" + path) for v in compose)


def test_operations_doc_lists_exactly_the_exported_metrics():
    doc = (ROOT / "docs" / "operations.md").read_text()
    listed = set(re.findall(r"(?m)^\| `(stream_detector_[a-z_]+)` \|", doc))
    families = {f.name: f.type for f in WorkerMetrics(Settings()).registry.collect()}
    exported = {name + {"counter": "_total", "info": "_info"}.get(kind, "") for name, kind in families.items()}
    assert listed == exported
