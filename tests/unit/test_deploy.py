"""What can be checked of the deployment files without a Docker engine (CI has none). The images and
the compose stack themselves are built and run by `make docker-smoke` (deploy/smoke.sh)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_every_service_has_a_healthcheck_and_a_pinned_image() -> None:
    services = _compose()["services"]
    assert set(services) >= {"redis", "trainer", "api", "api-gpu", "gateway", "locust"}
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: image {image!r} has no pinned tag"
        assert not image.endswith(":latest"), name


def test_redis_is_persistent_password_protected_and_not_published() -> None:
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync ${REDIS_APPENDFSYNC:-everysec}" in command  # everysec unless set
    assert "--requirepass" in command
    assert "ports" not in redis
    assert any(v.startswith("redis-data:") for v in redis["volumes"])


def test_the_gateway_is_the_only_published_port() -> None:
    services = _compose()["services"]
    published = {name for name, svc in services.items() if "ports" in svc}
    assert published == {"gateway"}
    assert services["gateway"]["ports"] == ["${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000"]
    assert "server api:8000" in (ROOT / "deploy" / "nginx.conf").read_text()


def test_api_waits_for_redis_and_scales_out_and_gpu_is_a_profile() -> None:
    services = _compose()["services"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["bundle"]["condition"] == "service_completed_successfully"
    assert "replicas" in services["api"]["deploy"]
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["trainer"]["profiles"] == ["train"]
    assert services["locust"]["profiles"] == ["loadtest"]


def test_env_example_documents_every_variable_compose_reads() -> None:
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    documented = {
        line.split("=")[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used <= documented, used - documented


def test_serving_image_runs_causerec_serve_as_non_root_with_a_readiness_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM .*$", text, re.MULTILINE)
    assert stages[-1].endswith("AS serving")  # the last stage: what `docker build .` builds
    serving = text.split("AS serving", 1)[1]
    assert "ARG ORT=cpu" in serving
    assert "USER causerec" in serving
    assert "/readyz" in serving
    assert 'ENTRYPOINT ["causerec", "serve"' in serving
    assert "torch" not in serving.replace("'torch' not in sys.modules", "")


def test_bundle_gate_command_waits_for_a_loadable_bundle(tiny_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The compose `bundle` service's command, run outside Docker: fails without a bundle, passes with one."""
    import shutil
    import subprocess
    import sys

    gate = _compose()["services"]["bundle"]["entrypoint"]
    assert gate[:3] == ["causerec", "wait-for-bundle", "/bundles/current"]
    causerec = str(Path(sys.executable).with_name("causerec"))
    target = tmp_path / "current"
    missing = subprocess.run(
        [causerec, "wait-for-bundle", str(target), "--timeout-s", "1"], capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "no usable bundle" in missing.stderr
    shutil.copytree(tiny_bundle, target)
    ready = subprocess.run(
        [causerec, "wait-for-bundle", str(target), "--timeout-s", "5"], capture_output=True, text=True
    )
    assert ready.returncode == 0, ready.stderr
    assert "ready" in ready.stdout


def test_trainer_image_installs_cpu_torch_unless_asked_otherwise() -> None:
    text = (ROOT / "deploy" / "trainer.Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert '${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}' in text
    assert _compose()["services"]["trainer"]["build"]["dockerfile"] == "deploy/trainer.Dockerfile"
