"""Issue 25 acceptance 3: the run report and the A/B readout page render in headless Chromium with every
section; the run report is linked from recsys.runs and warns on drifted inputs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from chromium import rendered_dom

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)


def _fake_run(url: str, home: Path, as_of: datetime, *, shifted: bool, seconds: float) -> str:
    """A run with the files the stages leave: stage figures, a snapshot, list parts."""
    from pipeline import nightly
    from pipeline.datagen.build import build_shop

    rid = nightly.begin(url, str(home), as_of, params={"as_of": as_of.isoformat()})
    d = home / "runs" / rid
    shop, _ = build_shop(400, 120, 9, seed=3, end=as_of)
    ev = shop.events
    if shifted:  # the last day: views only, on the least popular items (a broken tracker, a new campaign)
        last = ev["ts"] >= pd.Timestamp(as_of - timedelta(days=1))
        tail = ev["item_id"].value_counts().index[-20:]
        ev.loc[last, "event_type"] = "view"
        ev.loc[last & ev["item_id"].notna(), "item_id"] = np.resize(tail.to_numpy(), int(
            (last & ev["item_id"].notna()).sum()))
    (d / "snapshot" / "events").mkdir(parents=True)
    ev.to_parquet(d / "snapshot" / "events" / "part.0.parquet", index=False)
    shop.items[["item_id", "category", "created_at"]].to_parquet(d / "snapshot" / "items.parquet", index=False)
    shop.users[["user_id", "created_at"]].to_parquet(d / "snapshot" / "users.parquet", index=False)
    (d / "recs").mkdir()
    rng = np.random.default_rng(int(shifted))
    pd.DataFrame({"user_id": np.repeat(np.arange(1, 101), 10), "rank": np.tile(np.arange(1, 11), 100),
                  "item_id": rng.integers(1, 120, 1000),
                  "score": rng.beta(2, 5 if not shifted else 2, 1000)}).to_parquet(d / "recs" / "part-00000.parquet")
    (d / "stages").mkdir()
    figures = {
        "extract": {"seconds": seconds, "events": len(ev)},
        "train_ranker": {"seconds": 3.0, "model_version": "ranker-x", "trained": True, "ndcg@10": 0.2,
                         "recall_only_ndcg@10": 0.12},
        "evaluate_gate": {"seconds": 1.0, "promoted": True, "candidate": "ranker-x", "scoring_model": "ranker-x",
                          "reason": "candidate nDCG@10 0.2000 vs champion 0.1900 (tolerance 0.01): promoted"},
        "quality_gate": {"seconds": 0.5, "passed": True, "figures": {"coverage": 0.4, "diversity": 0.6,
                                                                       "users": 100, "rows": 1000}},
    }
    for name, fig in figures.items():
        (d / "stages" / f"{name}.json").write_text(json.dumps(fig))
    return rid


def test_run_report_renders_with_every_section_and_warns_on_drift(db_url: str, rerank_env: dict,
                                                                   tmp_path: Path) -> None:
    from pipeline import nightly
    from pipeline.db.engine import connect
    from pipeline.reporting.run_report import SECTIONS, write_run_report

    home = Path(rerank_env["RERANK_HOME"])
    first = _fake_run(db_url, home, AS_OF - timedelta(days=1), shifted=False, seconds=10.0)
    nightly.finish(db_url, first, "success")
    calm = write_run_report(db_url, str(home), first)
    assert not [w for w in calm["warnings"] if "event mix" in w], calm["warnings"]
    rid = _fake_run(db_url, home, AS_OF, shifted=True, seconds=200.0)
    out = write_run_report(db_url, str(home), rid)
    page = Path(out["report_html"])
    assert page.parent == home.resolve() / "runs" / rid and (page.parent / "stages").is_dir()
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT report_uri, stats->'report'->>'html' FROM recsys.runs WHERE run_id = %s", (rid,))
        assert cur.fetchone() == (str(page), str(page))
    joined = " | ".join(out["warnings"])
    assert "event mix" in joined and "item popularity" in joined and "stage extract" in joined, joined
    dom = rendered_dom(page, tmp_path)
    for sid in SECTIONS:
        assert re.search(rf'<section id="{sid}">', dom), sid
    assert int(re.search(r'data-images-ok="(\d+)"', dom).group(1)) >= 2  # stage times, scores
    assert "promoted" in dom and "nightly_20261123T0000" in dom  # the model's why, the run compared with


def test_ab_readout_page_renders_with_every_section(db_url: str, tmp_path: Path) -> None:
    from pipeline.datagen.build import build_world
    from pipeline.datagen.loop import load_loop, simulate_ab
    from pipeline.db.engine import connect
    from pipeline.db.shop import load_shop
    from pipeline.reporting.ab import SECTIONS, readout, write_report

    world = build_world(600, 150, 4, seed=2)
    with connect(db_url) as conn, conn.cursor() as cur:
        load_shop(cur, world.frames)
    imp, ev = simulate_ab(world, 3, {"control": 0.2, "tastes": 0.7}, seed=3)
    load_loop(db_url, imp, ev)
    r = readout(db_url, pd.Timestamp(world.end_ms, unit="ms").date())
    page = Path(write_report(r, tmp_path / "ab")["html"])
    dom = rendered_dom(page, tmp_path)
    for sid in SECTIONS:
        assert re.search(rf'<section id="{sid}">', dom), sid
    assert int(re.search(r'data-images-ok="(\d+)"', dom).group(1)) == 2
