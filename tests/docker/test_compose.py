"""docker/: the compose file checked against a schema and for what production needs, the
images' COPY sources present, and `docker compose config` where Docker Compose is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from bot.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SCHEMA = json.loads((Path(__file__).with_name("compose.schema.json")).read_text())
APP_SERVICES = ("web", "io-worker", "gpu-worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())  # merges `<<:` keys


def seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    )


def test_compose_file_matches_the_schema(compose: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(compose)


@pytest.mark.parametrize(
    "broken",
    [
        {"services": {"web": {"image": "x", "healtcheck": {"test": ["CMD", "true"]}}}},
        {"services": {"web": {"image": "x", "restart": "sometimes"}}},
        {"services": {"web": {"command": "x"}}},  # neither image nor build
        {"services": {"web": {"image": "x", "stop_grace_period": "two minutes"}}},
        {
            "services": {
                "w": {
                    "image": "x",
                    "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia"}]}}},
                }
            }
        },
    ],
)
def test_schema_refuses_mistakes(broken: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_every_service_is_there_with_a_healthcheck(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", *APP_SERVICES, "flower"} <= set(services)
    for name in ("redis", *APP_SERVICES):
        assert "healthcheck" in services[name], name


def test_redis_persists_on_a_volume(compose: dict) -> None:
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]


def test_app_services_take_settings_from_env_and_share_redis(compose: dict) -> None:
    for name in (*APP_SERVICES, "flower"):
        assert compose["services"][name]["env_file"] == "../.env", name
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_worker_reserves_an_nvidia_gpu_and_caches_models(compose: dict) -> None:
    gpu = compose["services"]["gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    cache = [v for v in gpu["volumes"] if v.endswith(":/models")]
    assert cache and cache[0].split(":")[0] in compose["volumes"]
    assert "HF_HOME=/models" in (DOCKER / "Dockerfile.worker").read_text()


def test_workers_stop_after_their_shutdown_grace(compose: dict) -> None:
    grace = Settings().shutdown_grace
    for name in ("web", "io-worker", "gpu-worker"):
        assert seconds(compose["services"][name]["stop_grace_period"]) > grace, name


@pytest.mark.parametrize(("service", "queue"), [("io-worker", "io"), ("gpu-worker", "gpu")])
def test_workers_consume_their_queue_with_threads(compose: dict, service: str, queue: str) -> None:
    command = compose["services"][service].get("command")
    if command is None:  # the image's CMD
        dockerfile = compose["services"][service]["build"]["dockerfile"]
        command = re.search(r"^CMD (.+)$", (ROOT / dockerfile).read_text(), re.M).group(1)
    text = " ".join(command) if isinstance(command, list) else command
    assert f"-Q {queue} " in text and "-P threads" in text


def test_named_volumes_are_declared_and_build_files_exist(compose: dict) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in compose["volumes"], (name, source)
            else:
                assert (DOCKER / source).exists(), (name, source)
        if "build" in service:
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("dockerfile", ["Dockerfile.web", "Dockerfile.worker"])
def test_images_copy_what_exists(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    for path in re.findall(r"-c ([\w/]+\.conf\.py)", text):
        assert (ROOT / path).is_file(), path


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) if it runs here, else None."""
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return ["docker", "compose"] if probe.returncode == 0 else None


@pytest.mark.skipif(_compose_cli() is None, reason="Docker Compose v2 is not installed here")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    # A copy with .env beside it (from .env.example), as an operator's checkout has.
    shutil.copytree(DOCKER, tmp_path / "docker")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    result = subprocess.run(
        [*_compose_cli(), "-f", str(tmp_path / "docker" / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
