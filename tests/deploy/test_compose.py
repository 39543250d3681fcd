"""docker-compose.yml, docker/ and .env.example agree with each other and with what the code reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import SECRETS, interpolate

from pipeline.dask_client import MMAP_THRESHOLD, WORKER_MEMORY_CONFIG
from pipeline.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {"airflow-api-server": "api-server", "airflow-scheduler": "scheduler",
                    "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}
DASK_WORKERS = ("dask-worker-1", "dask-worker-2")
HOME = "/opt/rerank/home"


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _mounts(service: dict) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", []) if isinstance(v, str)}


def _cmd(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def test_every_service_is_present(compose: dict) -> None:
    expected = {"postgres", "airflow-init", *AIRFLOW_SERVICES, "dask-scheduler", *DASK_WORKERS, "dask-worker-gpu"}
    assert expected <= set(compose["services"])


def test_postgres_16_with_publish_settings(compose: dict) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:16")
    cmd = " ".join(_cmd(pg))
    assert "maintenance_work_mem=" in cmd and "max_wal_size=" in cmd
    # the embedded server (make demo, benchmarks) runs with the same publish settings
    from pipeline.db.embedded import SERVER_SETTINGS

    assert all(f"{k}={v}" in _cmd(pg) for k, v in SERVER_SETTINGS.items())
    assert any(v.startswith("./docker/postgres-init:") for v in pg["volumes"])
    assert (REPO / "docker" / "postgres-init" / "01-airflow-db.sh").exists()


def test_airflow_services_share_one_image_with_the_project(compose: dict) -> None:
    services = compose["services"]
    for name, command in AIRFLOW_SERVICES.items():
        svc = services[name]
        assert svc["image"] == "ecom-rerank-airflow:latest", name
        assert svc["build"]["target"] == "airflow", name
        assert _cmd(svc) == [command], name
        env = _env(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-api-server:8080/"), name
        assert env["RERANK_HOME"] == HOME and _mounts(svc)[HOME] == "rerank-home", name
        assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert any(p.endswith(":8080:8080") for p in services["airflow-api-server"]["ports"])
    init = services["airflow-init"]
    assert init["image"] == "ecom-rerank-airflow:latest" and init["command"] == ["/opt/rerank/airflow-init.sh"]


def test_long_running_services_have_healthchecks(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if name == "airflow-init":
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "/api/v2/version" in " ".join(compose["services"]["airflow-api-server"]["healthcheck"]["test"])
    assert _env(compose["services"]["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"


def test_dask_cluster_is_where_the_code_looks(compose: dict, env_example: dict[str, str]) -> None:
    services = compose["services"]
    address = interpolate(_env(services["airflow-scheduler"])["RERANK_DASK_ADDRESS"], env_example)
    assert address == env_example["RERANK_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    sched = _cmd(services["dask-scheduler"])
    assert sched[:2] == ["dask", "scheduler"] and sched[sched.index("--port") + 1] == "8786"
    for name in (*DASK_WORKERS, "dask-worker-gpu"):
        svc = services[name]
        cmd = _cmd(svc)
        assert cmd[:3] == ["dask", "worker", address], name
        assert svc["build"]["target"] == "dask-worker", name
        assert _mounts(svc)[HOME] == "rerank-home", name
        assert _env(svc)["RERANK_HOME"] == HOME, name
        assert _env(svc)["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD), name  # as the LocalCluster's workers
        for key, value in WORKER_MEMORY_CONFIG.items():  # no pause or spill, as the LocalCluster's workers
            assert _env(svc)["DASK_" + key.upper().replace(".", "__").replace("-", "_")] == str(value)
        assert svc["depends_on"]["dask-scheduler"]["condition"] == "service_healthy", name
    assert len(DASK_WORKERS) == 2 and all("profiles" not in services[w] for w in DASK_WORKERS)
    assert "rerank-home" in compose["volumes"]


def test_gpu_profile_has_a_gpu_worker(compose: dict) -> None:
    services = compose["services"]
    gpu = services["dask-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    cmd = _cmd(gpu)
    assert cmd[cmd.index("--resources") + 1] == "GPU=1"
    assert _env(gpu)["RERANK_DEVICE"] == "cuda"
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[-1]
    assert [n for n, s in services.items() if "profiles" in s] == ["dask-worker-gpu"]


def test_dockerfile_targets_and_copies(compose: dict) -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M))
    used = {s["build"]["target"] for s in compose["services"].values() if "build" in s}
    assert used <= targets == {"airflow", "dask-worker"}
    pyproject = (REPO / "pyproject.toml").read_text()
    airflow_pin = re.search(r"apache-airflow>=([\d.]+)", pyproject).group(1)
    assert f"ARG AIRFLOW_VERSION={airflow_pin}" in text
    assert f"ARG PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}" in text  # client == cluster
    torch_pin = re.search(r'"torch==([\d.]+)"', pyproject).group(1)
    assert text.count(f"torch=={torch_pin}") == 2
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.M):
        for path in src.split():
            assert (REPO / path).exists(), path
            assert f"!{path}" in ignore or f"!{path}/" in ignore, f"{path} is excluded by Dockerfile.dockerignore"


def test_init_creates_the_gpu_pool_and_schemas(dag_constants: dict) -> None:
    GPU_POD_TEMPLATE, GPU_POOL = dag_constants["GPU_POD_TEMPLATE"], dag_constants["GPU_POOL"]

    script = (REPO / "docker" / "airflow-init.sh").read_text()
    assert "airflow db migrate" in script and "rerank db migrate" in script
    assert re.search(rf"airflow pools set {GPU_POOL} ", script)
    assert (REPO / "docker" / "pod_templates" / Path(GPU_POD_TEMPLATE).name).exists()
    assert "COPY --chown=airflow:root docker/pod_templates " + str(Path(GPU_POD_TEMPLATE).parent) in (
        REPO / "docker" / "Dockerfile").read_text()


def _code_rerank_vars() -> set[str]:
    found: set[str] = set()
    for folder in ("pipeline", "dags"):
        for path in (REPO / folder).rglob("*.py"):
            found |= set(re.findall(r"\bRERANK_[A-Z][A-Z0-9_]*\b", path.read_text()))
    # RERANK_TEST_* are fault-injection hooks of the test suite, never set in a deployment.
    return {v for v in found - {"RERANK_"} if not v.startswith("RERANK_TEST_")}


#: Settings that carry a secret: never in .env.example as such, composed in docker-compose.yml per service.
SECRET_SETTINGS = {"RERANK_DATABASE_URL", "RERANK_PIPELINE_DB_PASSWORD", "RERANK_APP_DB_PASSWORD"}


def test_every_rerank_variable_is_documented_and_set(env_example: dict[str, str], compose: dict) -> None:
    fields = {f"RERANK_{name.upper()}" for name in Settings.model_fields}
    used = fields | _code_rerank_vars()
    missing = sorted(used - SECRET_SETTINGS - set(env_example))
    assert not missing, f"set (and explain) these in .env.example: {missing}"
    assert not SECRET_SETTINGS & set(env_example)
    lines = (REPO / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.split("=", 1)[0] in used or line.split("=", 1)[0] in SECRETS:
            assert lines[i - 1].startswith("#"), f"{line.split('=')[0]} has no comment above it"
    unknown = sorted(k for k in env_example if k.startswith("RERANK_") and k not in used)
    assert not unknown, f".env.example sets RERANK_ keys the code never reads: {unknown}"
    # every setting of .env.example reaches the pipeline's containers (no env_file: named one by one)
    settings = _env(compose["services"]["airflow-scheduler"])
    for key in env_example:
        if key.startswith("RERANK_") and key != "RERANK_HOME":
            assert re.fullmatch(rf"\$\{{{key}(:[-?][^}}]*)?\}}", str(settings.get(key))), key


def _resolved(compose: dict, service: str, env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(v, env) for k, v in _env(compose["services"][service]).items()}


def test_env_example_values_are_valid_settings(compose: dict, filled_env: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in list(__import__("os").environ) if k.startswith("RERANK_")]:
        monkeypatch.delenv(key)
    env = _resolved(compose, "airflow-scheduler", filled_env)
    for key, value in env.items():
        if key.startswith("RERANK_"):
            monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.dask_address == "tcp://dask-scheduler:8786" and s.home == HOME
    assert env["AIRFLOW_CONN_RERANK_POSTGRES"] == env["RERANK_DATABASE_URL"]
    db = filled_env["POSTGRES_DB"]
    assert env["RERANK_DATABASE_URL"] == f"postgresql://rerank_pipeline:{filled_env['PIPELINE_DB_PASSWORD']}" \
                                         f"@postgres:5432/{db}"
    assert f"airflow:{filled_env['AIRFLOW_DB_PASSWORD']}@postgres:5432/airflow" in env[
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    init = _resolved(compose, "airflow-init", filled_env)
    user, pw = filled_env["POSTGRES_USER"], filled_env["POSTGRES_PASSWORD"]
    assert init["RERANK_DATABASE_URL"] == f"postgresql://{user}:{pw}@postgres:5432/{db}"  # the owner: migrations
    assert init["RERANK_PIPELINE_DB_PASSWORD"] == filled_env["PIPELINE_DB_PASSWORD"]
    assert init["RERANK_APP_DB_PASSWORD"] == filled_env["APP_DB_PASSWORD"]


def test_compose_interpolations_are_in_env_example(env_example: dict[str, str], compose: dict) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    names = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert names and names <= set(env_example), sorted(names - set(env_example))
    # no service gets .env whole: each secret goes only where docker-compose.yml names it
    assert [n for n, svc in compose["services"].items() if "env_file" in svc] == []


def test_published_ports_listen_on_localhost(compose: dict, env_example: dict[str, str]) -> None:
    published = {name: [interpolate(p, env_example) for p in svc.get("ports", [])]
                 for name, svc in compose["services"].items()}
    assert {n for n, ports in published.items() if ports} == {"postgres", "airflow-api-server", "dask-scheduler"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:") and port.count(":") == 2, (name, port)
    assert env_example["BIND_ADDRESS"] == "127.0.0.1"
    without = {k: v for k, v in env_example.items() if k != "BIND_ADDRESS"}
    assert interpolate(compose["services"]["postgres"]["ports"][0], without) == "127.0.0.1:5432:5432"


def test_secrets_are_required_and_never_shipped(compose: dict, env_example: dict[str, str]) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for name in SECRETS:
        assert env_example[name] == "", f"{name} must be empty in .env.example"
        uses = re.findall(rf"\$\{{{name}(:[-?])?", text)
        assert uses and set(uses) == {":?"}, f"{name}: every use must be ${{{name}:?...}} (refused when empty)"
    assert not [v for v in env_example.values() if "change-me" in v]
    with pytest.raises(LookupError, match="POSTGRES_PASSWORD"):
        _resolved(compose, "postgres", env_example)


def _check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "docker" / "check-secrets.sh"), "echo", "started"],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("env", [{"POSTGRES_PASSWORD": "change-me-shop"}, {"AIRFLOW_DB_PASSWORD": ""},
                                 {"AIRFLOW__API_AUTH__JWT_SECRET": "change-me-jwt"},
                                 {"RERANK_DATABASE_URL": "postgresql://rerank:change-me-shop@postgres:5432/shop"}])
def test_the_entrypoint_guard_refuses_placeholder_secrets(env: dict[str, str]) -> None:
    proc = _check_secrets({"POSTGRES_USER": "rerank", **env})
    assert proc.returncode == 1 and "started" not in proc.stdout
    assert "refusing to start" in proc.stderr and next(iter(env)) in proc.stderr


def test_the_entrypoint_guard_runs_the_real_entrypoint_with_real_secrets(compose: dict,
                                                                       filled_env: dict[str, str]) -> None:
    proc = _check_secrets({k: v for k, v in _resolved(compose, "airflow-init", filled_env).items()})
    assert proc.returncode == 0 and proc.stdout.strip() == "started", proc.stderr


def test_the_guard_runs_before_everything(compose: dict) -> None:
    services = compose["services"]
    assert services["postgres"]["entrypoint"][:2] == ["bash", "/opt/rerank/check-secrets.sh"]
    assert "/opt/rerank/check-secrets.sh" in services["airflow-init"]["entrypoint"]
    for name in ("postgres", "airflow-init"):
        assert "./docker/check-secrets.sh:/opt/rerank/check-secrets.sh:ro" in services[name]["volumes"], name

    def waits_for_init(name: str, seen: frozenset = frozenset()) -> bool:
        deps = services[name].get("depends_on", {})
        if deps.get("airflow-init", {}).get("condition") == "service_completed_successfully":
            return True
        return any(waits_for_init(d, seen | {name}) for d in deps if d not in seen and d != "postgres")

    for name in services:
        if name not in ("postgres", "airflow-init"):
            assert waits_for_init(name), f"{name} starts before airflow-init checked the secrets"


def test_least_privilege_logins(compose: dict, filled_env: dict[str, str]) -> None:
    owner_pw = filled_env["POSTGRES_PASSWORD"]
    holders = {name for name in compose["services"]
               if any(owner_pw in str(v) for v in _resolved(compose, name, filled_env).values())}
    assert holders == {"postgres", "airflow-init"}  # the owner's password nowhere else
    for name in ("airflow-scheduler", "airflow-api-server", "dask-worker-1", "dask-worker-2", "dask-worker-gpu"):
        env = _resolved(compose, name, filled_env)
        assert urlsplit(env["RERANK_DATABASE_URL"]).username == "rerank_pipeline", name
        assert "RERANK_PIPELINE_DB_PASSWORD" not in env and "RERANK_APP_DB_PASSWORD" not in env, name
    assert urlsplit(_resolved(compose, "airflow-scheduler", filled_env)["AIRFLOW_CONN_RERANK_POSTGRES"]
                    ).username == "rerank_pipeline"
    assert "rerank db migrate --create-logins" in (REPO / "docker" / "airflow-init.sh").read_text()


def test_airflow_ui_users_have_roles(compose: dict, filled_env: dict[str, str]) -> None:
    env = _resolved(compose, "airflow-api-server", filled_env)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    users = dict(u.split(":") for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert set(users.values()) <= {"viewer", "user", "op", "admin"}
    assert list(users.values()).count("admin") == 1 and len(users) >= 3
