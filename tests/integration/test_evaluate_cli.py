"""`rerank evaluate` end to end: import into a throwaway database, train, recommend, score, write files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.dataset]
RERANK = str(Path(sys.executable).with_name("rerank"))


def test_evaluate_movielens_through_the_cli(shared_data: Path, db_url: str, tmp_path: Path) -> None:
    ml = shared_data / "ml-100k"
    if not ml.exists():
        pytest.skip("ml-100k absent")
    out = tmp_path / "ml"
    env = {**os.environ, "RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(tmp_path / "home")}
    proc = subprocess.run([RERANK, "evaluate", "--format", "movielens", "--path", str(ml), "--protocol",
                           "msr-stratified", "--models", "popularity,item-cf", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "ml-100k" and metrics["protocol"] == "msr-stratified" and metrics["k"] == 10
    by_model = {r["model"]: r for r in metrics["results"]}
    assert by_model["popularity"]["ndcg@10"] == pytest.approx(0.2522, abs=0.002)
    assert by_model["item-cf"]["ndcg@10"] == pytest.approx(0.4113, abs=0.002)
    for name in ["train.csv", "test.csv", "recs_popularity.csv", "recs_item-cf.csv", "report.html"]:
        assert (out / name).exists(), name
    # The throwaway database is gone again; the shop database was never touched.
    import psycopg2

    conn = psycopg2.connect(db_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'rerank_eval_%'")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM shop.events")
        assert cur.fetchone() == (0,)
    conn.close()
