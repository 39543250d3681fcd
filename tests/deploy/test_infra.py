"""infra/: Helm values against the charts' known structure, Terraform parsed and `terraform fmt -check`ed.

Offline, the charts' own values.schema.json cannot be fetched: the known keys below are transcribed from the
official Airflow chart (1.2x, Airflow 3) and the dask/dask chart; a typo or a key from another chart fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.dask_client import MMAP_THRESHOLD, WORKER_MEMORY_CONFIG
from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
AIRFLOW_TOP = {
    "executor", "airflowVersion", "defaultAirflowRepository", "defaultAirflowTag", "images", "postgresql", "data",
    "pgbouncer", "redis", "fernetKeySecretName", "apiSecretKeySecretName", "extraEnvFrom", "extraEnv", "env",
    "secret", "config", "volumes", "volumeMounts", "dags", "logs", "apiServer", "scheduler", "dagProcessor",
    "triggerer", "workers", "migrateDatabaseJob", "createUserJob", "nodeSelector", "tolerations", "affinity",
    "labels", "ingress", "statsd", "podTemplate", "uid", "gid", "airflowHome", "useStandardNaming",
}
AIRFLOW_COMPONENT = {"replicas", "resources", "nodeSelector", "tolerations", "affinity", "env", "extraVolumes",
                     "extraVolumeMounts", "enabled", "serviceAccount", "persistence", "args", "command"}
AIRFLOW_EXECUTORS = {"KubernetesExecutor", "CeleryExecutor", "CeleryKubernetesExecutor", "LocalExecutor"}
DASK_TOP = {"scheduler", "webUI", "worker", "additional_worker_groups", "jupyter"}
DASK_WORKER = {"name", "image", "replicas", "default_resources", "env", "envFrom", "extraArgs", "resources",
               "threads_per_worker", "mounts", "nodeSelector", "tolerations", "affinity", "port", "annotations"}
HOME = "/opt/rerank/home"


def load_yaml(path: Path) -> dict:
    with path.open() as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def airflow_values() -> dict:
    return load_yaml(INFRA / "helm" / "airflow-values.yaml")


@pytest.fixture(scope="module")
def dask_values() -> dict:
    return load_yaml(INFRA / "helm" / "dask-values.yaml")


def test_every_yaml_file_parses() -> None:
    files = [*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), *(REPO / "docker").rglob("*.yaml")]
    assert len(files) >= 3
    for path in files:
        assert isinstance(load_yaml(path), dict), path


def test_airflow_values_keys_are_the_charts(airflow_values: dict) -> None:
    assert set(airflow_values) <= AIRFLOW_TOP, sorted(set(airflow_values) - AIRFLOW_TOP)
    for comp in ("apiServer", "scheduler", "dagProcessor", "triggerer", "workers"):
        assert set(airflow_values[comp]) <= AIRFLOW_COMPONENT, (comp, set(airflow_values[comp]) - AIRFLOW_COMPONENT)
    assert set(airflow_values["images"]["airflow"]) <= {"repository", "tag", "digest", "pullPolicy"}
    assert isinstance(airflow_values["extraEnvFrom"], str)  # the chart templates it as a string
    assert all(set(e) == {"name", "value"} for e in airflow_values["env"])
    for section, options in airflow_values["config"].items():
        assert re.fullmatch(r"[a-z_]+", section) and all(re.fullmatch(r"[a-z_]+", o) for o in options), section


def test_airflow_values_match_the_project(airflow_values: dict, dask_values: dict) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert airflow_values["airflowVersion"] == re.search(r"apache-airflow>=([\d.]+)", pyproject).group(1)
    assert airflow_values["executor"] in AIRFLOW_EXECUTORS
    if airflow_values["executor"] == "KubernetesExecutor":
        assert airflow_values["redis"]["enabled"] is False
    assert airflow_values["postgresql"]["enabled"] is False and airflow_values["data"]["metadataSecretName"]
    assert airflow_values["dagProcessor"]["enabled"] and airflow_values["triggerer"]["enabled"]
    env = {e["name"]: e["value"] for e in airflow_values["env"]}
    fields = {f"RERANK_{n.upper()}" for n in Settings.model_fields}
    assert {k for k in env if k.startswith("RERANK_")} <= fields
    sched = dask_values["scheduler"]
    assert env["RERANK_DASK_ADDRESS"] == f"tcp://rerank-dask-{sched['name']}.rerank.svc.cluster.local:" \
                                         f"{sched['servicePort']}"
    assert env["RERANK_HOME"] == HOME
    mounts = {m["name"]: m["mountPath"] for m in airflow_values["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in airflow_values["volumes"]}
    assert mounts["rerank-home"] == HOME and claims["rerank-home"] == "rerank-home"
    assert "secretRef" in airflow_values["extraEnvFrom"] and "rerank-env" in airflow_values["extraEnvFrom"]


def test_dask_values_keys_and_workers(dask_values: dict) -> None:
    assert set(dask_values) <= DASK_TOP
    groups = [dask_values["worker"], *dask_values.get("additional_worker_groups", [])]
    for g in groups:
        assert set(g) <= DASK_WORKER, set(g) - DASK_WORKER
        env = {e["name"]: e["value"] for e in g["env"]}
        assert env["RERANK_HOME"] == HOME
        assert env["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD)  # as the LocalCluster's workers
        for key, value in WORKER_MEMORY_CONFIG.items():  # no pause or spill, as the LocalCluster's workers
            assert env["DASK_" + key.upper().replace(".", "__").replace("-", "_")] == str(value)
        assert {m["mountPath"] for m in g["mounts"]["volumeMounts"]} == {HOME}
    gpu = dask_values["additional_worker_groups"][0]
    assert gpu["extraArgs"] == ["--resources", "GPU=1"] and gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert dask_values["jupyter"]["enabled"] is False


def test_gpu_pod_template_matches_the_dag_and_the_cluster(dag_constants: dict) -> None:
    GPU_POD_TEMPLATE = dag_constants["GPU_POD_TEMPLATE"]

    pod = load_yaml(REPO / "docker" / "pod_templates" / Path(GPU_POD_TEMPLATE).name)
    base = pod["spec"]["containers"][0]
    assert base["name"] == "base"  # the KubernetesExecutor fills in the container called base
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"] == {"ecom-rerank/pool": "gpu"}
    assert {m["mountPath"] for m in base["volumeMounts"]} >= {HOME}
    assert "ecom-rerank/pool\" = \"gpu\"" in (INFRA / "terraform" / "cluster.tf").read_text()


def test_terraform_one_file_per_concern_and_parses() -> None:
    tf = INFRA / "terraform"
    assert {p.name for p in tf.glob("*.tf")} == {"versions.tf", "variables.tf", "network.tf", "cluster.tf",
                                                   "postgres.tf", "storage.tf", "outputs.tf"}
    hcl2 = pytest.importorskip("hcl2")
    parsed = {p.name: hcl2.loads(p.read_text()) for p in tf.glob("*.tf")}
    resources = {next(iter(r)).strip('"') for r in parsed["postgres.tf"]["resource"]}
    assert {"aws_db_instance", "aws_db_parameter_group"} <= resources
    text = (tf / "postgres.tf").read_text()
    assert re.search(r'engine_version\s*=\s*"16"', text) and '"maintenance_work_mem"' in text
    declared = {next(iter(v)).strip('"') for v in parsed["variables.tf"]["variable"]}
    used = set(re.findall(r"\bvar\.([a-z_]+)", "".join(p.read_text() for p in tf.glob("*.tf"))))
    assert used <= declared, used - declared


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_fmt_check() -> None:
    proc = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(INFRA / "terraform")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


K8S = INFRA / "k8s"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """infra/k8s/*.yaml by kind/name."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        doc = load_yaml(path)
        out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def test_rerank_home_has_a_claim_every_mount_names(manifests: dict, airflow_values: dict, dask_values: dict) -> None:
    pvc = manifests["PersistentVolumeClaim/rerank-home"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["metadata"]["namespace"] == "rerank"
    sc = manifests["StorageClass/efs"]
    assert pvc["spec"]["storageClassName"] == sc["metadata"]["name"] and sc["provisioner"] == "efs.csi.aws.com"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in airflow_values["volumes"]}
    for g in [dask_values["worker"], *dask_values["additional_worker_groups"]]:
        claims |= {v["persistentVolumeClaim"]["claimName"] for v in g["mounts"]["volumes"]}
    claims |= {v["persistentVolumeClaim"]["claimName"] for v in _pod(manifests["Deployment/rerank-refresh"])["volumes"]}
    assert claims == {pvc["metadata"]["name"]}


def test_the_refresher_follows_as_the_pipeline_login(manifests: dict) -> None:
    dep = manifests["Deployment/rerank-refresh"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    c = _pod(dep)["containers"][0]
    assert c["command"] == ["rerank", "refresh", "--follow"]
    assert [e["secretRef"]["name"] for e in c["envFrom"]] == ["rerank-env"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {HOME}
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert _pod(dep)["securityContext"]["runAsNonRoot"] is True


def test_a_job_creates_the_gpu_pool_the_dag_uses(manifests: dict, dag_constants: dict) -> None:
    job = manifests["Job/airflow-gpu-pool"]
    cmd = _pod(job)["containers"][0]["command"]
    assert cmd[:4] == ["airflow", "pools", "set", dag_constants["GPU_POOL"]] and int(cmd[4]) >= 1
    env = _pod(job)["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "airflow-metadata"


def test_only_the_migration_job_holds_the_owner(manifests: dict, airflow_values: dict, dask_values: dict) -> None:
    job = manifests["Job/rerank-migrate"]
    c = _pod(job)["containers"][0]
    assert c["command"] == ["rerank", "db", "migrate", "--create-logins"]
    assert {e["secretRef"]["name"] for e in c["envFrom"]} == {"rerank-owner", "rerank-logins"}
    text = "".join(p.read_text() for p in [*K8S.glob("*.yaml"), *(INFRA / "helm").glob("*.yaml")]
                   if p.name != "migrate-job.yaml")
    assert "rerank-owner" not in text.replace("only in rerank-owner", "") and "rerank-logins" not in text
    assert "rerank-env" in airflow_values["extraEnvFrom"]
    for g in [dask_values["worker"], *dask_values["additional_worker_groups"]]:
        assert [e["secretRef"]["name"] for e in g["envFrom"]] == ["rerank-env"], g["name"]
        assert not any("PASSWORD" in e["name"] or "DATABASE_URL" in e["name"] for e in g["env"])


def test_gpu_dask_workers_scale_from_zero(dask_values: dict) -> None:
    gpu = next(g for g in dask_values["additional_worker_groups"] if g["name"] == "gpu")
    assert gpu["replicas"] == 0
    cluster = (INFRA / "terraform" / "cluster.tf").read_text()
    assert "node-template/label/ecom-rerank/pool" in cluster and re.search(r"min_size\s*=\s*0", cluster)


def test_airflow_ui_users_have_roles(airflow_values: dict) -> None:
    core = airflow_values["config"]["core"]
    assert core["simple_auth_manager_all_admins"] == "False"
    roles = [u.split(":")[1] for u in core["simple_auth_manager_users"].split(",")]
    assert set(roles) <= {"viewer", "user", "op", "admin"} and roles.count("admin") == 1


def test_terraform_restricts_the_api_and_installs_the_efs_driver() -> None:
    hcl2 = pytest.importorskip("hcl2")
    tf = INFRA / "terraform"
    cluster = hcl2.loads((tf / "cluster.tf").read_text())
    modules = {next(iter(m)).strip('"'): next(iter(m.values())) for m in cluster["module"]}
    eks = modules["eks"]
    assert eks["cluster_endpoint_public_access_cidrs"] == "${var.api_allowed_cidrs}"
    assert eks["cluster_endpoint_private_access"] is True
    addons = eks["cluster_addons"]
    assert "aws-efs-csi-driver" in addons
    assert "efs_csi_irsa" in addons["aws-efs-csi-driver"]["service_account_role_arn"]
    irsa = modules["efs_csi_irsa"]
    assert irsa["attach_efs_csi_policy"] is True
    assert "kube-system:efs-csi-controller-sa" in str(irsa["oidc_providers"])
    parsed = hcl2.loads((tf / "variables.tf").read_text())["variable"]
    variables = {next(iter(v)).strip('"'): next(iter(v.values())) for v in parsed}
    cidrs = variables["api_allowed_cidrs"]
    assert "default" not in cidrs  # an operator must choose
    assert "0.0.0.0/0" in str(cidrs["validation"])
    outputs = (tf / "outputs.tf").read_text()
    for name in ("owner_database_url", "pipeline_database_url", "pipeline_db_password", "app_db_password"):
        assert f'output "{name}"' in outputs
        assert name in (INFRA / "README.md").read_text()
    assert "rerank_pipeline:" in outputs


def test_readme_orders_the_steps_and_names_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    order = readme[readme.index("## Order of steps"):]
    steps = ["terraform apply", "storageclass-efs.yaml", "rerank-home-pvc.yaml", "rerank-owner", "migrate-job.yaml",
             "dask-values.yaml", "airflow-values.yaml", "gpu-pool-job.yaml", "refresh-follow.yaml"]
    positions = [order.index(s) for s in steps]
    assert positions == sorted(positions)
    for path in [*K8S.glob("*.yaml"), *(INFRA / "helm").glob("*.yaml")]:
        assert path.name in readme, path.name
    assert "Not checked without a cluster" in readme
