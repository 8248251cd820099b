"""The container and Kubernetes deployment, checked without a Docker daemon or a cluster.

- Dockerfile: hadolint (every rule, down to style) and what the image promises: one install path
  (`make install`, the target `make serve` depends on), non-root, EXPOSE 8000 and 8081, a HEALTHCHECK on /readyz,
  the runtime fixed, a stop grace inside `docker stop`'s default, no `# syntax` line (an offline build
  cannot fetch a frontend image).
- .dockerignore: what the Dockerfile copies stays in the build context; environments, VCS data, caches out.
- compose.yaml and every manifest: each AESERVE_* variable is a real setting with a valid value.
- deploy/k8s/*.yaml: kubernetes-validate, strict (unknown fields rejected), plus what a schema cannot see:
  selectors, ports and names that must agree across resources.
- deploy/k8s/kserve/: kubernetes-validate has no schema for KServe's CRDs, so the InferenceService and its
  ServingRuntime get a structural check of the fields this project relies on, and the runtime's container is
  validated strictly as a core Container.
- The install path itself (slow): `make install` into a fresh venv, then the service from that venv, started
  with the image's CMD arguments and environment, answers /readyz, /healthz and /encode, and the image's
  and compose's health-check commands pass against it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from app.settings import Settings
from scripts import local_server

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
KSERVE = K8S / "kserve" / "inferenceservice.yaml"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"aeserve:{VERSION}"
# The oldest Kubernetes release still widely run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


# --- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped.

    Instructions before the first FROM (global ARGs) form stage 0.
    """
    stages: list[list[tuple[str, str]]] = [[]]
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, rest = (current + stripped).partition(" ")
        current = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def instruction_args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for rest in instruction_args(stage, "ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def exec_form(rest: str) -> list[str]:
    """The JSON (exec) form of CMD, or of HEALTHCHECK's CMD after its options."""
    return json.loads(rest[rest.index("[") :])


STAGES = dockerfile_stages(DOCKERFILE.read_text())
GLOBAL, BUILD, RUNTIME = STAGES[0], STAGES[1], STAGES[-1]
# Subprocesses see neither the test's own venv (PYTHONPATH, VIRTUAL_ENV) nor an outer `make test`'s flags
# and variables (MAKEFLAGS, MAKELEVEL): each make call here stands alone, as a user's would.
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
}


def make(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=CLEAN_ENV, **kwargs)


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.fail("hadolint not installed")


def test_dockerfile_passes_hadolint_at_every_level(tmp_path):
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the control: the same call does flag the faults it is there to catch
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y make\nRUN pip install .\n")
    flagged = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style", str(bad)], capture_output=True)
    found = flagged.stdout.decode()
    assert flagged.returncode != 0
    # unpinned base and package, a pip cache in the layer (warnings); apt lists left behind (info)
    assert {"DL3007", "DL3008", "DL3042", "DL3009"} <= set(re.findall(r"DL\d{4}", found)), found


def test_dockerfile_pins_a_slim_python_311_base_for_both_stages():
    (base,) = [rest for rest in instruction_args(GLOBAL, "ARG") if rest.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-[a-z]+", base), base
    assert len(STAGES) == 3, "a build stage and a runtime stage"
    assert instruction_args(BUILD, "FROM") == ["${PYTHON_IMAGE} AS build"]
    assert instruction_args(RUNTIME, "FROM") == ["${PYTHON_IMAGE}"]


def test_the_image_installs_through_make_install_only(tmp_path):
    runs = [rest for stage in STAGES for rest in instruction_args(stage, "RUN")]
    installs = [rest for rest in runs if "make install" in rest]
    assert len(installs) == 1 and installs[0].endswith("make install VENV=/opt/venv"), installs
    assert not [rest for rest in runs if re.search(r"\bpip3? install\b", rest)], "a second install path"
    assert "--from=build /opt/venv /opt/venv" in instruction_args(RUNTIME, "COPY")
    assert exec_form(instruction_args(RUNTIME, "CMD")[0])[:3] == ["/opt/venv/bin/python", "-m", "app.serve"]
    # ...and `make install` is what `make serve` runs first: the dry run of serve is install's recipe, then uvicorn
    venv = tmp_path / "venv"
    install = make("-n", "install", f"VENV={venv}", capture_output=True, text=True)
    serve = make("-n", "serve", f"VENV={venv}", capture_output=True, text=True)
    assert install.returncode == 0 and serve.returncode == 0, install.stderr + serve.stderr
    assert f"{venv}/bin/python -m pip install --quiet -e ." in install.stdout
    assert serve.stdout.startswith(install.stdout)
    assert serve.stdout[len(install.stdout) :].startswith(f"{venv}/bin/python -m app.serve app.main:app")


def test_the_image_runs_as_non_root_on_port_8000_with_a_healthcheck():
    (user,) = instruction_args(RUNTIME, "USER")
    uid, _, gid = user.partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert instruction_args(RUNTIME, "EXPOSE") == ["8000 8081"]  # HTTP, and gRPC on all interfaces
    assert env_of(RUNTIME)["AESERVE_GRPC_HOST"] == "0.0.0.0"
    cmd = exec_form(instruction_args(RUNTIME, "CMD")[0])
    assert cmd[3:8] == ["app.main:app", "--host", "0.0.0.0", "--port", "8000"]
    assert "--workers" not in cmd, "workers come from WEB_CONCURRENCY, an environment variable"
    (healthcheck,) = instruction_args(RUNTIME, "HEALTHCHECK")
    probe = exec_form(healthcheck)
    # healthy means ready: an image that is never ready (a runtime it lacks, a broken model) is unhealthy
    assert probe[:2] == ["python", "-c"] and "http://127.0.0.1:8000/readyz" in probe[2]
    assert "--start-period=" in healthcheck
    env = env_of(RUNTIME)
    # the runtime the image has (LiteRT; no TensorFlow), as compose.yaml and the README say it fixes
    assert env["AESERVE_RUNTIME"] == "litert"
    # requests in flight get less than `docker stop`'s default 10 s before its SIGKILL
    assert int(env["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"]) < 10
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["WEB_CONCURRENCY"] == "1"
    # the models are baked in where the service is told to look
    assert "models/ /srv/aeserve/models/" in instruction_args(RUNTIME, "COPY")
    assert env["AESERVE_MODELS_DIR"] == "/srv/aeserve/models"


# --- .dockerignore ------------------------------------------------------------------------------------


def glob_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, a matched folder takes its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_what_the_image_needs_and_drops_the_rest():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # every source the Dockerfile copies from the build context, and every tracked file under it
    sources = [
        source
        for stage in STAGES
        for rest in instruction_args(stage, "COPY")
        if not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert {"models/", "app/", "training/", "pyproject.toml", "Makefile"} <= set(sources)
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert any(path.endswith("saved_model.pb") for path in tracked)
    kept_out = [path for path in [*(s.rstrip("/") for s in sources), *tracked] if ignored(path, patterns)]
    assert not kept_out, kept_out
    for junk in (
        ".venv/bin/python",
        ".git/HEAD",
        "app/__pycache__/main.cpython-311.pyc",
        "app/routers/__pycache__/x.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "aeserve.egg-info/PKG-INFO",
        "models/mnist-conv/.2.staging/saved_model.pb",
        ".env",
    ):
        assert ignored(junk, patterns), junk


# --- settings in compose.yaml and the manifests -------------------------------------------------------


def check_settings(env: dict[str, str], where: str, defaults: bool) -> None:
    """Every AESERVE_* name is a setting, every value one the service accepts (and, if `defaults`, its default)."""
    fields = Settings.model_fields
    named = {name: value for name, value in env.items() if name.startswith("AESERVE_")}
    assert named, where
    for name, value in named.items():
        field = name.removeprefix("AESERVE_").lower()
        assert field in fields, f"{where}: {name} is not a setting of app/settings.py"
        parsed = getattr(Settings(**{field: value}), field)
        if defaults:
            assert parsed == fields[field].default, f"{where}: {name}={value} is not the service's default"


def test_compose_runs_the_image_on_port_8000_with_a_readiness_healthcheck():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    (service,) = compose["services"].values()
    assert service["build"] == "." and service["image"] == IMAGE
    assert service["ports"] == ["8000:8000", "8081:8081"]
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8000/readyz" in test[3]
    env, from_shell_only = {}, []
    for name, value in service["environment"].items():
        if value is None:  # Compose passes the shell's value when there is one, else leaves it unset
            from_shell_only.append(name)
            continue
        match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
        assert match and match[1] == name, f"{name}: {value!r} should be ${{{name}:-default}}"
        env[name] = match[2]
    assert env["WEB_CONCURRENCY"] == "1"
    check_settings(env, "compose.yaml", defaults=True)
    # every setting reaches the container, but the three the image fixes (its baked models, LiteRT, gRPC's host)
    passed = {name.removeprefix("AESERVE_").lower() for name in [*env, *from_shell_only] if name.startswith("AESERVE_")}
    assert passed == set(Settings.model_fields) - {"models_dir", "runtime", "grpc_host"}
    # those without a fallback are the settings whose default is "none": an empty value would not mean that
    assert sorted(from_shell_only) == ["AESERVE_API_KEY", "AESERVE_CORS_ORIGINS"]
    assert Settings().api_key is None and Settings().cors_origins == []


# --- Kubernetes ---------------------------------------------------------------------------------------


def load_k8s() -> dict[str, dict]:
    """The core manifests (deploy/k8s/*.yaml) by kind."""
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one resource of each kind"
    return by_kind


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_manifests_validate_strictly(version):
    resources = load_k8s()
    assert set(resources) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for resource in resources.values():
        kubernetes_validate.validate(resource, version, strict=True)
    # the control: strict validation rejects a misspelt field
    broken = load_k8s()["Deployment"]
    broken["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(broken, version, strict=True)


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_manifests_agree_with_each_other_and_with_the_image():
    resources = load_k8s()
    deployment, service = resources["Deployment"], resources["Service"]
    hpa, pdb = resources["HorizontalPodAutoscaler"], resources["PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    main = container(deployment)
    assert main["image"] == IMAGE
    port, grpc_port = main["ports"]
    assert port["containerPort"] == 8000 and service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert grpc_port["containerPort"] == Settings.model_fields["grpc_port"].default == 8081
    (grpc_service,) = (p for p in service["spec"]["ports"] if p["targetPort"] == grpc_port["name"])
    assert grpc_service["appProtocol"] == "kubernetes.io/h2c"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    # start-up budget well above the ~5 s README measures from start to ready on 2 cores
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    # the same non-root user as the Dockerfile's USER
    (user,) = instruction_args(RUNTIME, "USER")
    assert str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == user.partition(":")[0]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # the HPA scales this Deployment on CPU, and owns the replica count
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "aeserve"}
    assert deployment["metadata"]["name"] == "aeserve" and "replicas" not in deployment["spec"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    # sized for one worker: ~620 MiB RSS under load fits the memory request; the CPU limit is the ~2 cores it can use
    resources_ = main["resources"]
    assert resources_["requests"]["memory"] == "768Mi" and resources_["limits"]["memory"] == "1Gi"
    assert resources_["limits"]["cpu"] == "2"
    env = {item["name"]: item["value"] for item in main["env"]}
    assert env["WEB_CONCURRENCY"] == "1" and env["AESERVE_RUNTIME"] == "litert"
    check_settings(env, "deployment.yaml", defaults=True)


def test_kserve_inference_service_uses_v2_and_this_image():
    runtime, isvc = yaml.safe_load_all(KSERVE.read_text())
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert "v2" in runtime["spec"]["protocolVersions"]
    (server,) = runtime["spec"]["containers"]
    assert server["name"] == "kserve-container" and server["image"] == IMAGE
    assert [(p["name"], p["containerPort"]) for p in server["ports"]] == [("http", 8000), ("h2c", 8081)]
    # KServe's containers are core Containers: validate this one strictly inside a Pod
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "aeserve"}, "spec": {"containers": [server]}}
    kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)
    # the same probes and sizing as the plain Deployment
    main = container(load_k8s()["Deployment"])
    assert server["resources"] == main["resources"]
    assert server["readinessProbe"]["httpGet"]["path"] == main["readinessProbe"]["httpGet"]["path"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert "storageUri" not in model, "the models are baked into the image"
    assert predictor["scaleMetric"] == "cpu" and 0 < predictor["minReplicas"] <= predictor["maxReplicas"]


# --- the install path, for real -----------------------------------------------------------------------


def run_healthcheck(command: list[str], python: Path, port: int) -> int:
    """Run an image or compose health-check command (exec form) against 127.0.0.1:port."""
    argv = [str(python) if arg == "python" else arg.replace(":8000/", f":{port}/") for arg in command]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_the_image_healthcheck_fails_while_the_service_is_not_ready(tmp_path):
    # a service that answers /healthz but will never be ready (here: no models; in the image, a runtime it
    # lacks, such as -e AESERVE_RUNTIME=tensorflow) is not healthy
    (healthcheck,) = instruction_args(RUNTIME, "HEALTHCHECK")
    env = {"AESERVE_MODELS_DIR": str(tmp_path)}
    process, base, _ = local_server.start("app.main:app", env=env, wait_for="/healthz")
    try:
        assert httpx.get(f"{base}/readyz").status_code == 503
        assert run_healthcheck(exec_form(healthcheck), Path(sys.executable), int(base.rsplit(":", 1)[1])) != 0
    finally:
        local_server.stop(process)


@pytest.mark.slow
def test_make_install_into_a_fresh_venv_then_serve_from_it(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    install = make("install", f"VENV={venv}", capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    python = venv / "bin" / "python"
    # the stamp is fresh: `make serve` after it starts at once instead of installing again
    stamp = make("-q", f"VENV={venv}", f"{venv}/.runtime-installed")
    assert stamp.returncode == 0
    # the runtime comes from the new venv, and only the runtime (no dev or train extras: no TensorFlow)
    where = subprocess.run(
        [python, "-c", "import ai_edge_litert, fastapi, uvicorn; print(fastapi.__file__, ai_edge_litert.__file__)"],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(path).is_relative_to(venv) for path in where.stdout.split()), where.stdout
    for extra in ("pytest", "tensorflow"):
        assert subprocess.run([python, "-c", f"import {extra}"], env=CLEAN_ENV, capture_output=True).returncode != 0

    # start it as the image does: the CMD's uvicorn options and the image's environment, paths mapped here
    cmd = exec_form(instruction_args(RUNTIME, "CMD")[0])
    options = cmd[4:]
    for flag in ("--host", "--port"):
        at = options.index(flag)
        del options[at : at + 2]
    mapping = {"/opt/venv": str(venv), "/srv/aeserve": str(ROOT), "$PATH": os.environ["PATH"]}
    env = env_of(RUNTIME)
    for name, value in env.items():
        for old, new in mapping.items():
            value = value.replace(old, new)
        env[name] = value
    monkeypatch.setattr(sys, "executable", str(python))  # local_server starts `sys.executable -m uvicorn`
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log:
        try:
            process, base, _ = local_server.start("app.main:app", *options, env=env | {"PYTHONPATH": ""}, log=log)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}; its log ends:\n{log_path.read_text()[-3000:]}")
        port = int(base.rsplit(":", 1)[1])
        try:
            with httpx.Client(base_url=base, timeout=30) as http:
                assert http.get("/readyz").json()["status"] == "ready"
                assert http.get("/healthz").json() == {"status": "ok"}
                answer = http.post("/encode", json={"images": [[0.0] * 784]})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert len(body["codes"]) == 1 and len(body["codes"][0]) == body["latent_dim"] > 0
            (healthcheck,) = instruction_args(RUNTIME, "HEALTHCHECK")
            compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
            (service,) = compose["services"].values()
            assert run_healthcheck(exec_form(healthcheck), python, port) == 0
            assert run_healthcheck(service["healthcheck"]["test"][1:], python, port) == 0
        finally:
            code = local_server.stop(process)
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log_path.read_text()
    # and the health check fails once nothing answers
    assert run_healthcheck(exec_form(healthcheck), python, port) != 0
