"""The Docker deployment, checked by reading it (no Docker engine needed): a Ray head,
scalable workers and the service sharing one results volume, with the addresses, ports
and tokens wired consistently, and an image that pins torch like the package."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # Compose files are YAML with merge keys (<<), which safe_load resolves like Compose does.
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _flags(command: str) -> dict[str, str]:
    out = {}
    for arg in shlex.split(command):
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            out[key] = value
        elif arg.startswith("--"):
            out[arg[2:]] = ""
    return out


def test_three_services_share_the_results_volume_at_the_data_dir(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"ray-head", "ray-worker", "service"}
    assert "results" in compose["volumes"]
    for name, svc in services.items():
        assert "results:/data" in svc["volumes"], name
        assert svc["environment"]["S2AP_DATA_DIR"] == "/data", name
        assert svc["image"] == services["service"]["image"], name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile" and svc["build"]["context"] == ".."
        assert svc["shm_size"], name


def test_ray_token_auth_is_on_everywhere_with_one_token(compose: dict[str, Any]) -> None:
    tokens = set()
    for name, svc in compose["services"].items():
        env = svc["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        tokens.add(env["RAY_AUTH_TOKEN"])
    assert len(tokens) == 1 and tokens.pop().startswith("${RAY_AUTH_TOKEN:?")  # required, never defaulted
    assert compose["services"]["service"]["environment"]["S2AP_API_TOKEN"].startswith("${S2AP_API_TOKEN:?")


def test_workers_and_service_point_at_the_head(compose: dict[str, Any]) -> None:
    services = compose["services"]
    head = _flags(services["ray-head"]["command"])
    assert "head" in head and "block" in head
    assert head["dashboard-host"] == "0.0.0.0"  # reachable from the other containers
    worker = _flags(services["ray-worker"]["command"])
    assert worker["address"] == f"ray-head:{head['port']}" and "block" in worker
    svc = services["service"]
    assert svc["environment"]["RAY_ADDRESS"] == f"http://ray-head:{head['dashboard-port']}"
    cmd = shlex.split(svc["command"])
    assert cmd[:3] == ["python", "-m", "service"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert [p.rsplit(":", 1)[1] for p in svc["ports"]] == [port]
    for name in ("ray-worker", "service"):
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "gcs_healthz" in " ".join(services["ray-head"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])


def test_workers_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = compose["services"]["ray-worker"]
    assert "container_name" not in worker  # a fixed name would clash on --scale
    assert "ports" not in worker  # so would fixed host ports


def test_no_shell_substitution_compose_would_misread() -> None:
    # Compose interpolates $VAR and ${VAR}; a bare "$(" is an invalid interpolation error.
    for n, line in enumerate((DOCKER / "compose.yaml").read_text().splitlines(), 1):
        if not line.lstrip().startswith("#"):
            assert "$(" not in line, f"compose.yaml:{n}: {line}"


def test_plain_http_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for mapping in compose["services"]["ray-head"]["ports"]:
        assert mapping.startswith("127.0.0.1:"), mapping
    # The service: loopback unless S2AP_BIND says otherwise (the host's address, as Compose
    # reads "${S2AP_BIND:-127.0.0.1}" with the variable unset).
    (mapping,) = compose["services"]["service"]["ports"]
    assert mapping.startswith("${S2AP_BIND:-127.0.0.1}:"), mapping


def test_compose_v2_is_named_as_required() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    assert re.search(r"^name: s2ap$", text, re.M)
    assert "Compose v2" in text and "Compose v2" in (DOCKER / "README.md").read_text()


def test_tls_override_proxies_to_the_service_on_443() -> None:
    tls = yaml.safe_load((DOCKER / "compose.tls.yaml").read_text())
    proxy = tls["services"]["tls"]
    assert "443:443" in proxy["ports"]
    command = shlex.split(proxy["command"])
    assert command[:2] == ["caddy", "reverse-proxy"] and command[command.index("--to") + 1] == "service:8000"
    assert command[command.index("--from") + 1].startswith("${S2AP_TLS_HOST:?")
    assert proxy["depends_on"]["service"]["condition"] == "service_healthy"


def test_ray_floor_is_the_first_release_with_token_auth() -> None:
    """Ray 2.52.0 brought RAY_AUTH_MODE=token; an older Ray would ignore it and run open."""
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"(ray\[[^"]*)"', pyproject)
    assert spec == "ray[default,tune,train]>=2.52,<3"
    assert f'ARG RAY_SPEC="{spec}"' in (DOCKER / "Dockerfile").read_text()
    assert 'pip install "${RAY_SPEC}" .' in (DOCKER / "Dockerfile").read_text()


def test_gpu_override_gives_workers_gpus() -> None:
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    worker = gpu["services"]["ray-worker"]
    assert "--num-gpus" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_dockerfile_cpu_by_default_cuda_by_build_arg_and_torch_pinned() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE\}$", text, re.M)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r'TORCH_SPEC="torch[^"]*<=2\.14\.1"', text)
    assert "pip install ." in text
    assert "nvidia/cuda:" in text  # the CUDA variant is documented in the file
    assert re.search(r"^USER s2ap$", text, re.M)  # not root
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    assert "torch>=2.1,<=2.14.1" in pyproject and "torch>=2.1,<=2.14.1" in text


def test_s3_override_wires_one_object_store_into_every_node_and_the_service(compose: dict[str, Any]) -> None:
    s3 = yaml.safe_load((DOCKER / "compose.s3.yaml").read_text())
    services = s3["services"]
    assert services["object-store"]["image"].startswith("${S2AP_OBJECT_STORE_IMAGE:-")
    assert "ports" not in services["object-store"]  # on the compose network only
    assert "objects:/data" in services["object-store"]["volumes"] and "objects" in s3["volumes"]
    # The same endpoint and credentials everywhere, required (never defaulted), never in a spec.
    envs = {name: services[name]["environment"] for name in ("ray-head", "ray-worker", "service")}
    envs["object-store-bucket"] = services["object-store-bucket"]["environment"]
    for name, env in envs.items():
        assert env["AWS_ENDPOINT_URL"] == "http://object-store:9000", name
        assert env["AWS_ACCESS_KEY_ID"].startswith("${S3_ACCESS_KEY:?"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_KEY:?"), name
    store = services["object-store"]["environment"]
    assert store["MINIO_ROOT_USER"] == envs["service"]["AWS_ACCESS_KEY_ID"]
    assert store["MINIO_ROOT_PASSWORD"] == envs["service"]["AWS_SECRET_ACCESS_KEY"]
    assert envs["service"]["S2AP_STORAGE"] == "s3://s2ap/service"
    assert 'create_dir("s2ap")' in services["object-store-bucket"]["command"][-1]
    for name in ("ray-head", "service"):
        assert (
            services[name]["depends_on"]["object-store-bucket"]["condition"]
            == "service_completed_successfully"
        )
    # It only adds to the base file's services (compose merges environments and depends_on).
    assert {"ray-head", "ray-worker", "service"} <= set(compose["services"])
    for n, line in enumerate((DOCKER / "compose.s3.yaml").read_text().splitlines(), 1):
        if not line.lstrip().startswith("#"):
            assert "$(" not in line, f"compose.s3.yaml:{n}: {line}"
