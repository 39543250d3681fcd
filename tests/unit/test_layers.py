"""Layers point one way: extract -> features -> recall -> rank -> rerank -> publish; the nightly run, the refresh,
the CLI and the evaluation use them, never the reverse; no production module imports the evaluator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
STAGES = ["extract", "features", "recall", "rank", "rerank", "publish"]
#: Packages that may use the evaluator: itself and the command line that runs it.
EVALUATION_USERS = {"evaluate", "cli"}


def _imports() -> list[tuple[str, str, str]]:
    """(file, its top-level package under pipeline/, imported module) for every import of the package."""
    out = []
    for f in sorted(PIPELINE.rglob("*.py")):
        rel = f.relative_to(PIPELINE)
        pkg = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out += [(str(rel), pkg, n) for n in names]
    return out


IMPORTS = _imports()


def _target(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def test_the_scan_sees_the_package() -> None:
    assert len({f for f, _, _ in IMPORTS}) > 50
    assert any(_target(m) == "recall" for _, p, m in IMPORTS if p == "rank")


def test_no_production_module_imports_the_evaluator() -> None:
    bad = [(f, m) for f, p, m in IMPORTS if _target(m) == "evaluate" and p not in EVALUATION_USERS]
    assert not bad, bad


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_only_earlier_stages(stage: str) -> None:
    later = set(STAGES[STAGES.index(stage) + 1:]) | {"recommend", "refresh", "nightly", "cli", "demo", "evaluate"}
    bad = [(f, m) for f, p, m in IMPORTS if p == stage and _target(m) in later]
    assert not bad, bad


def test_the_library_never_imports_airflow() -> None:
    bad = [(f, m) for f, _, m in IMPORTS if m.split(".")[0] == "airflow"]
    assert not bad, bad


def test_only_the_shared_path_composes_recall_rank_and_rerank() -> None:
    """``pipeline.recommend`` is the one composer: the nightly and the refresh call it and no longer build
    candidates themselves (the refresh's own list building drifted from the nightly's before)."""
    callers = {p for _, p, m in IMPORTS if _target(m) == "recommend"}
    assert {"nightly", "refresh"} <= callers
    composers = [(f, m) for f, p, m in IMPORTS if p in ("nightly", "refresh")
                 and m in ("pipeline.recall.candidates.generate_candidates", "pipeline.rerank.finalize_lists",
                           "pipeline.recall.stage.candidates_for_users")]
    assert not composers, composers
