"""The multi-node deployment files (cluster/deploy/) start a Freshline that can run: Ray accepts
the `ray up` file, every node gets the whole validated environment with passwords from a Secret,
entrypoints name this repository's real modules, and autoscaling bounds hold together."""

from __future__ import annotations

import copy
import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.secrets import SECRET_ENV_VARS, node_secrets
from cluster.settings_env import ENV_VARS, settings_from_env
from features.errors import ConfigError
from serve_apps.config import ServingConfig

DEPLOY = Path(__file__).resolve().parents[3] / "cluster" / "deploy"
REPO = DEPLOY.parents[1]
NODE_VARS = {var.name for var in ENV_VARS}
SECRET_NAME = "freshline-redis"


def _yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def _env_file() -> dict[str, str]:
    lines = (DEPLOY / "freshline.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("rayservice.yaml", _yaml("rayservice.yaml")["spec"]["rayClusterConfig"]),
        ("rayjob.yaml", _yaml("rayjob.yaml")["spec"]["rayClusterSpec"]),
    ]


def _pod_templates(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- ray up -------------------------------------------------------------------------------------


def test_ray_accepts_the_ray_up_file() -> None:
    validate_config(prepare_config(_yaml("cluster.yaml")))


def test_ray_refuses_a_broken_ray_up_file() -> None:
    broken = copy.deepcopy(_yaml("cluster.yaml"))
    broken["available_node_types"]["worker"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError, match="'two' is not of type 'integer'"):
        validate_config(prepare_config(broken))


def test_ray_up_bounds_hold_and_the_head_runs_no_actors_and_keeps_gcs_outside() -> None:
    config = _yaml("cluster.yaml")
    worker = config["available_node_types"]["worker"]
    assert 1 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start
    assert f"--port={_env_file()['FRESHLINE_RAY_PORT']}" in head_start
    assert "RAY_external_storage_namespace=" in head_start
    assert _env_file()["RAY_REDIS_ADDRESS"]  # head fault tolerance: GCS in an external Redis
    assert "--env-file /home/ubuntu/freshline.env" in config["docker"]["run_options"]


def test_the_ray_up_environment_is_every_node_variable_and_validates() -> None:
    env = _env_file()
    assert set(env) == NODE_VARS | set(SECRET_ENV_VARS) | {"RAY_REDIS_ADDRESS"}
    settings = settings_from_env({k: v for k, v in env.items() if k in NODE_VARS})
    assert settings.topology.dynamodb_mode == "aws"
    assert settings.kafka.host not in {"127.0.0.1", "localhost"}
    # Each region's Redis on a host of its own, not this machine's loopback.
    hosts = {r.name: r.redis_host for r in settings.topology}
    assert hosts == {"us-east": "redis-us-east.internal", "eu-west": "redis-eu-west.internal"}


def test_the_checked_in_environment_holds_no_password_and_a_node_refuses_it(
    tmp_path: Path,
) -> None:
    env = _env_file()
    assert all(env[name] == "" for name in SECRET_ENV_VARS)
    with pytest.raises(ConfigError):
        node_secrets(tmp_path / "absent.json", env)


# --- KubeRay ------------------------------------------------------------------------------------


def test_the_configmap_carries_every_node_variable_and_validates() -> None:
    data = _yaml("freshline-env.yaml")["data"]
    assert set(data) == NODE_VARS
    settings = settings_from_env(data)
    assert settings.topology.dynamodb_mode == "aws"
    assert settings.kafka.host not in {"127.0.0.1", "localhost"}


@pytest.mark.parametrize(("name", "cluster"), _cluster_specs())
def test_every_pod_gets_the_configmap_and_every_password_from_the_secret(
    name: str, cluster: dict[str, Any]
) -> None:
    for pod in _pod_templates(cluster):
        for container in pod["containers"]:
            assert {"configMapRef": {"name": "freshline-env"}} in container["envFrom"], name
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert refs == {var: {"name": SECRET_NAME, "key": var} for var in SECRET_ENV_VARS}
            assert not {e["name"] for e in container["env"]} & NODE_VARS - set(refs), name


@pytest.mark.parametrize(("name", "cluster"), _cluster_specs())
def test_resources_and_autoscaling_bounds_are_sane(name: str, cluster: dict[str, Any]) -> None:
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    gcs = cluster["gcsFaultToleranceOptions"]
    assert gcs["redisAddress"] and gcs["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        (container,) = group["template"]["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits == requests, f"{name}: a guaranteed pod is not evicted under pressure"
        assert float(group["rayStartParams"]["num-cpus"]) <= _cpus(limits["cpu"]), name
    images = {c["image"] for pod in _pod_templates(cluster) for c in pod["containers"]}
    assert len(images) == 1, f"{name}: every node runs the same image"


def test_the_image_is_built_on_the_ray_version_the_project_pins() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py3{sys.version_info.minor}" in dockerfile


def test_the_rayjob_entrypoint_is_the_pipeline_job_cli_with_valid_arguments() -> None:
    argv = shlex.split(_yaml("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "cluster.pipeline_job"]
    # argparse checks the verb and option types before it reaches --help, so exit 0 means the
    # repository's own CLI accepts exactly these arguments (without connecting to Ray).
    result = subprocess.run(
        [sys.executable, "-m", argv[2], *argv[3:], "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr


def test_the_rayjob_gives_its_driver_the_drain_time_freshline_pipeline_up_gives() -> None:
    from cluster.pipeline import DRAIN_S

    env = yaml.safe_load(_yaml("rayjob.yaml")["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == str(DRAIN_S)


def test_every_serve_application_resolves_and_its_config_validates() -> None:
    service = _yaml("rayservice.yaml")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    data = _yaml("freshline-env.yaml")["data"]
    assert serve["http_options"]["port"] == int(data["FRESHLINE_SERVE_PORT"])
    mounts = {
        m["mountPath"]
        for pod in _pod_templates(service["spec"]["rayClusterConfig"])
        for c in pod["containers"]
        for m in c["volumeMounts"]
    }
    names = []
    for app in serve["applications"]:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        config = ServingConfig.model_validate(app["args"]["config"])
        assert config.region == app["name"] and app["route_prefix"] == f"/{app['name']}"
        assert config.topology.dynamodb_mode == "aws"
        assert str(config.redis_password_file) in mounts
        names.append(app["name"])
    assert tuple(names) == config.topology.names  # one application per region


# Run when KUBERAY_CRD_DIR holds KubeRay's ray.io_rayservices.yaml and ray.io_rayjobs.yaml
# (ray-operator/config/crd/bases of the KubeRay release you deploy; docs/deploy.md).
_CRD_DIR = os.environ.get("KUBERAY_CRD_DIR")


def _strict(schema: Any) -> Any:
    """Kubernetes prunes unknown fields silently; refusing them here catches a misspelt knob."""
    if isinstance(schema, dict):
        open_ = "additionalProperties" in schema or schema.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        if "properties" in schema and not open_:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@pytest.mark.skipif(not _CRD_DIR, reason="KUBERAY_CRD_DIR not set")
@pytest.mark.parametrize(
    ("crd", "manifest"), [("rayservices", "rayservice"), ("rayjobs", "rayjob")]
)
def test_manifests_match_the_kuberay_crd_schema(crd: str, manifest: str) -> None:
    document = yaml.safe_load((Path(str(_CRD_DIR)) / f"ray.io_{crd}.yaml").read_text())
    (version,) = [v for v in document["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"].update(apiVersion={}, kind={}, metadata={"type": "object"})
    jsonschema.validate(_yaml(f"{manifest}.yaml"), schema)
