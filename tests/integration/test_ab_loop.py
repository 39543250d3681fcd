"""Issue 25: the simulated loop end to end on a generated shop, read out through recsys.ab_daily.

Two arms, the second better by construction (it serves the generator's true tastes in more slots): the
readout must name it with an interval that excludes zero; a skewed assignment must trip the ratio check.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ARMS = {"control": 0.2, "tastes": 0.7}


def _shop(url: str, seed: int = 5):
    from pipeline.datagen.build import build_world
    from pipeline.db.engine import connect
    from pipeline.db.shop import load_shop

    world = build_world(1500, 300, 6, seed=seed)
    with connect(url) as conn, conn.cursor() as cur:
        load_shop(cur, world.frames)
    return world


def _start(world) -> date:
    import pandas as pd

    return pd.Timestamp(world.end_ms, unit="ms").date()


def test_the_better_arm_wins_and_a_skewed_split_trips_the_ratio_check(db_url: str, new_database) -> None:
    from pipeline.datagen.loop import load_loop, simulate_ab
    from pipeline.reporting.ab import readout

    world = _shop(db_url)
    imp, ev = simulate_ab(world, 5, ARMS, seed=1)
    load_loop(db_url, imp, ev)
    r = readout(db_url, _start(world), expected={"control": 0.5, "tastes": 0.5})
    assert not r.srm["mismatch"], r.srm
    d = r.diffs.set_index("metric")
    assert d.at["ctr", "variant"] == "tastes"
    assert d.at["ctr", "ci_low"] > 0, d          # the interval of the better arm's CTR gain excludes zero
    assert r.winner("ctr") == "tastes"
    # the figures are the view's: recompute CTR per arm from the frames that were loaded
    shown = imp.groupby("variant").size()
    assert r.arms.set_index("variant")["impressions"].to_dict() == shown.to_dict()
    # bootstrap intervals agree in sign
    rb = readout(db_url, _start(world), method="bootstrap", n_boot=300)
    assert rb.diffs.set_index("metric").at["ctr", "ci_low"] > 0

    with new_database() as skewed_url:
        world = _shop(skewed_url)
        imp, ev = simulate_ab(world, 5, ARMS, seed=1, skew=0.1)
        load_loop(skewed_url, imp, ev)
        skewed = readout(skewed_url, _start(world))
        assert skewed.srm["mismatch"] and skewed.srm["p_value"] < 1e-3, skewed.srm
        assert skewed.winner("ctr") is None      # no arm is named while the split is broken


def test_reader_reads_ab_daily_and_the_cli_writes_the_page(db_url: str, rerank_env: dict, tmp_path) -> None:
    import psycopg2

    from pipeline.datagen.loop import load_loop, simulate_ab

    world = _shop(db_url, seed=6)
    imp, ev = simulate_ab(world, 2, ARMS, seed=2)
    load_loop(db_url, imp, ev)
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT variant, sum(exposed_users) FROM recsys.ab_daily GROUP BY 1 ORDER BY 1")
        seen = dict(cur.fetchall())
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT * FROM recsys.ab_user_daily LIMIT 1")
    assert set(seen) == set(ARMS) and sum(seen.values()) == imp.groupby(
        [imp["ts"].dt.date, "user_id"]).ngroups
    since = _start(world)
    proc = subprocess.run([str(Path(sys.executable).with_name("rerank")), "ab", "report", "--since", str(since),
                           "--until", str(since + timedelta(days=2)), "--out", str(tmp_path / "ab")],
                          capture_output=True, text=True, env={**__import__("os").environ, **rerank_env})
    assert proc.returncode == 0, proc.stderr
    assert "sample ratio check" in proc.stdout
    page = (tmp_path / "ab" / "ab_report.html").read_text()
    for sid in ("summary", "srm", "metrics", "plot-intervals", "daily", "plot-daily"):
        assert f'id="{sid}"' in page


def test_impressions_import_loads_good_rows_and_quarantines_bad_ones(db_url: str, rerank_env: dict,
                                                                     tmp_path) -> None:
    import os

    from pipeline.db.engine import connect

    f = tmp_path / "shown.csv"
    f.write_text("user_id,item_id,rank,ts,variant,run_id\n"
                 "1,10,1,2026-11-20T10:00:00Z,a,nightly_x\n"
                 "1,11,2,1700000000,b,\n"
                 "1,,3,2026-11-20T10:00:00Z,a,\n"
                 "2,13,-1,2026-11-20T10:00:00Z,a,\n")
    rerank = str(Path(sys.executable).with_name("rerank"))
    proc = subprocess.run([rerank, "impressions", "import", str(f)], capture_output=True, text=True,
                          env={**os.environ, **rerank_env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "imported impressions: 2 rows loaded; 2 rows quarantined"
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id, item_id, rank, variant, run_id, placement FROM shop.impressions ORDER BY rank")
        assert cur.fetchall() == [(1, 10, 1, "a", "nightly_x", "home"), (1, 11, 2, "b", None, "home")]
        cur.execute("SELECT raw->>'line', reason FROM recsys.quarantine WHERE source = 'shop.impressions' "
                    "ORDER BY 1")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == ["4", "5"] and "empty item_id" in rows[0][1] and "[1, 10000]" in rows[1][1]
