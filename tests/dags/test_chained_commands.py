"""Every command form of the README, chained as a new user runs them, on one throwaway database, no stand-ins.

`generate --tier`, a nightly through `airflow dags test` and one through the CLI, `recommend`, new events and
`refresh --once`, a short `refresh --follow`, a user-subset and a one-stage nightly, `publish rollback`,
`models list / promote / rollback`, a tiny `evaluate`, and `import` of each format. The refresh runs on the
files the real nightly run left (the ALS factors, the champion ranker), which a stand-in run does not have.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.db.engine import connect

pytestmark = [pytest.mark.integration, pytest.mark.dags]
BIN = Path(sys.executable).parent
RERANK = str(BIN / "rerank")


def _env(db_url: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env.update({"RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(home), "RERANK_DASK_WORKERS": "1",
                "RERANK_TOP_N": "10", "RERANK_CANDIDATES": "40", "RERANK_RANK_WINDOWS": "2",
                "RERANK_RANK_MAX_EPOCHS": "3", "RERANK_EMBEDDING_METHOD": "tfidf",
                # a ranker trained for seconds loses to recall-only ordering, which the gate would keep: here the
                # champion ranker must exist, so the refresh and `models` run on it
                "RERANK_GATE_RECALL_MARGIN": "-1", **(extra or {})})
    return env


def _rerank(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([RERANK, *args], env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, f"rerank {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def _one(url: str, query: str, params: tuple = ()) -> tuple:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


def _insert_views(url: str, user: int, items: list[int]) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT max(event_id) FROM shop.events")
        top = cur.fetchone()[0]
        for i, item in enumerate(items, start=1):
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                        "VALUES (%s, %s, %s, 'view', clock_timestamp())", (top + i, user, item))


def _shared_path_lists(url: str, home: Path, user: int, event_ids: list[int]) -> pd.DataFrame:
    """What ``pipeline.recommend.recommend`` returns for ``user`` from the live run's artefacts and the history
    the refresh's batch read (its end and its clock), in this process: the refresh's overlay must equal it."""
    from pipeline.recommend import recommend
    from pipeline.refresh import core, live

    with connect(url) as conn, conn.cursor() as cur:
        pub = core._live_pub(cur)
        cur.execute("SELECT to_event_id, started_at FROM recsys.refresh_batches WHERE users > 0 "
                    "ORDER BY batch_id DESC LIMIT 1")
        upto, now = cur.fetchone()
        cur.execute(core._history_sql(), {"users": [user], "upto": upto, "since": now - pd.Timedelta(days=90)})
        history = core._frame(cur.fetchall(), core.EVENT_COLUMNS)
        rerank = core._rerank_inputs(cur, now)
    run = live.load_live(url, str(home), pub, pub["champion"])
    assert run.model_version != "recall-only", "the champion ranker scores the refresh"
    lists, _ = recommend(np.array([user]), history, run.art, now, core.default_config(),
                         fresh_ids=np.array(event_ids), **rerank)
    return lists


def _assert_same_lists(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same items with the same scores (float tolerance: another process, maybe other torch threads) and the
    same order wherever neighbouring scores differ by more than that tolerance; the same reasons."""
    got, want = got.sort_values("rank").reset_index(drop=True), want.sort_values("rank").reset_index(drop=True)
    assert sorted(got["item_id"]) == sorted(want["item_id"])
    by_item = want.set_index("item_id")
    np.testing.assert_allclose(got["score"].to_numpy(float), by_item.loc[got["item_id"], "score"].to_numpy(float),
                               rtol=1e-5, atol=1e-7)
    assert got["reason"].tolist() == by_item.loc[got["item_id"], "reason"].tolist()
    clear = np.r_[np.abs(np.diff(want["score"].to_numpy(float))) > 1e-5, True]
    assert got["item_id"][clear].tolist() == want["item_id"][clear].tolist()


def _recommend(env: dict[str, str], user: int) -> list[dict]:
    return json.loads(_rerank(env, "recommend", str(user), "--json").stdout)


def _write_datasets(root: Path) -> dict[str, Path]:
    """One tiny, valid file (or folder) per import format, written here: no public data needed."""
    users, items = range(1, 31), range(1, 21)
    ml = root / "ml"
    ml.mkdir()
    (ml / "u.data").write_text("".join(f"{u}\t{1 + (u * 7 + k) % 20}\t{1 + k % 5}\t{880000000 + u * 1000 + k}\n"
                                       for u in users for k in range(6)))
    taobao = root / "UserBehavior.csv"
    kinds = ["pv", "pv", "fav", "cart", "buy"]
    taobao.write_text("".join(f"{u},{100 + (u + k) % 20},{7 + k % 3},{kinds[k % 5]},{1511544070 + u * 60 + k}\n"
                              for u in users for k in range(5)))
    amazon = root / "Tiny.txt"
    amazon.write_text("".join(f"{u} " + " ".join(str(1 + (u + k) % 20) for k in range(5)) + "\n" for u in users))
    digi = root / "train-item-views.csv"
    digi.write_text("session_id;user_id;item_id;timeframe;eventdate\n" + "".join(
        f"{u};{u if u % 3 else 'NA'};{1 + (u * 3 + k) % 20};{k * 1000};2016-05-0{1 + u % 9}\n"
        for u in users for k in range(4)))
    frame = pd.DataFrame([{"uid": u, "item_id": i, "event_type": "view", "ts": 1_700_000_000 + u * 100 + i}
                          for u in users for i in items if (u + i) % 4 == 0])
    csv = root / "events.csv"
    frame.to_csv(csv, index=False)
    parquet = root / "events.parquet"
    frame.rename(columns={"uid": "user_id"}).to_parquet(parquet)
    return {"movielens": ml, "taobao": taobao, "amazon-s3rec": amazon, "diginetica": digi, "csv": csv,
            "parquet": parquet}


def test_every_readme_command_chained_on_real_runs(airflow_db: dict[str, str], db_url: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(db_url, tmp_path / "home")

    # --- a shop of the S tier's shape (its events per user), small enough for a test --------------------------
    gen = _rerank(env, "generate", "--tier", "S", "--users", "300", "--items", "100", "--days", "10", "--seed", "7")
    assert "generated shop: 300 users, 100 items" in gen.stdout
    n_events = _one(db_url, "SELECT count(*) FROM shop.events")[0]
    assert 300 * 30 < n_events < 300 * 80, "the S tier's ratio: about 50 events a user"
    assert json.loads(_rerank(env, "db", "status").stdout)["revision"]
    assert _rerank(env, "db", "url").stdout.strip().splitlines()[-1].startswith("postgresql://")
    _rerank(env, "db", "migrate")  # again on a migrated database: nothing to do, no error

    # --- the nightly through Airflow, then through the CLI ------------------------------------------------------
    af_env = {**airflow_db, **env, "AIRFLOW_CONN_RERANK_POSTGRES": db_url}
    proc = subprocess.run([str(BIN / "airflow"), "dags", "test", "rerank_nightly", "-c",
                           json.dumps({"as_of": "2026-11-23T00:00:00+00:00"})],
                          env=af_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "state=success" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-4000:]
    _rerank(env, "run", "nightly", "--as-of", "2026-11-24")
    assert _one(db_url, "SELECT run_id FROM recsys.publications WHERE live")[0] == "nightly_20261124T0000"

    # --- recommend ---------------------------------------------------------------------------------------------
    user = int(_one(db_url, "SELECT user_id FROM shop.events GROUP BY user_id ORDER BY count(*) DESC LIMIT 1")[0])
    rows = _recommend(env, user)
    assert [r["rank"] for r in rows] == list(range(1, 11)) and all(r["reason"] for r in rows)
    assert {r["run_id"] for r in rows} == {"nightly_20261124T0000"}
    short = _rerank(env, "recommend", str(user), "--n", "3")
    assert short.stdout.count("\n") >= 3

    # --- new events, refresh --once on the real run's files (ALS factors, the champion ranker) -----------------
    fresh_items = [int(i) for (i,) in [_one(db_url, "SELECT item_id FROM shop.items ORDER BY item_id LIMIT 1 "
                                                    "OFFSET %s", (k,)) for k in (3, 17)]]
    first = json.loads(_rerank(env, "refresh", "--once").stdout.strip().splitlines()[-1])
    assert first["users"] == 0, "the history is the nightly run's: it only moves the watermark"
    _insert_views(db_url, user, fresh_items)
    once = json.loads(_rerank(env, "refresh", "--once").stdout.strip().splitlines()[-1])
    assert once["status"] == "ok" and once["events"] == 2 and once["users"] == 1, once
    rows = _recommend(env, user)
    assert len(rows) == 10 and all(r["run_id"].startswith("refresh_") for r in rows)
    # the refresh's list is the shared path's for the same inputs (one recommender, issue 21)
    for k, v in env.items():
        if k.startswith("RERANK_"):
            monkeypatch.setenv(k, v)
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_id FROM shop.events WHERE user_id = %s ORDER BY event_id DESC LIMIT 2", (user,))
        new_ids = [r[0] for r in cur.fetchall()]
    _assert_same_lists(pd.DataFrame(rows), _shared_path_lists(db_url, tmp_path / "home", user, new_ids))

    # --- refresh --follow: woken by the next event, stopped by SIGTERM after its batch ------------------------
    other = int(_one(db_url, "SELECT min(user_id) FROM shop.users WHERE user_id <> %s", (user,))[0])
    follower = subprocess.Popen([RERANK, "refresh", "--follow", "--poll-seconds", "30"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _one(
                db_url, "SELECT count(*) FROM recsys.refresh_batches WHERE to_event_id >= "
                        "(SELECT max(event_id) FROM shop.events)")[0]:
            time.sleep(0.2)
        time.sleep(1.0)  # LISTENing now
        _insert_views(db_url, other, fresh_items[:1])
        while time.monotonic() < deadline and not _one(
                db_url, "SELECT count(*) FROM recsys.recs_realtime WHERE user_id = %s", (other,))[0]:
            time.sleep(0.2)
        assert _one(db_url, "SELECT count(*) FROM recsys.recs_realtime WHERE user_id = %s", (other,))[0] == 10
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["events"] >= 1

    # --- a user-subset nightly, one stage of a run, a dry run ---------------------------------------------------
    _rerank(env, "run", "nightly", "--as-of", "2026-11-25", "--users", f"{user},{other}", "--top-n", "10",
            "--no-retrain")
    assert _one(db_url, "SELECT run_id FROM recsys.publications WHERE live")[0] == "nightly_20261125T0000"
    assert _one(db_url, "SELECT count(DISTINCT user_id) FROM recsys.user_recommendations")[0] >= 250
    _rerank(env, "run", "nightly", "--as-of", "2026-11-25", "--stage", "report")
    dry = _rerank(env, "run", "nightly", "--as-of", "2026-11-26", "--dry-run", "--no-retrain")
    assert dry.returncode == 0
    assert _one(db_url, "SELECT run_id FROM recsys.publications WHERE live")[0] == "nightly_20261125T0000"

    # --- publish rollback ----------------------------------------------------------------------------------------
    back = _rerank(env, "publish", "rollback")
    assert "nightly_20261124T0000" in back.stdout
    assert _one(db_url, "SELECT run_id FROM recsys.publications WHERE live")[0] == "nightly_20261124T0000"

    # --- models list / promote / rollback -----------------------------------------------------------------------
    listed = _rerank(env | {"COLUMNS": "250"}, "models", "list")
    versions = [v for (v,) in _all(db_url, "SELECT model_version FROM recsys.models ORDER BY trained_at")]
    assert versions and all(v[:12] in listed.stdout for v in versions)
    champion = _one(db_url, "SELECT model_version FROM recsys.models WHERE status = 'champion'")
    others = [v for v in versions if not champion or v != champion[0]]
    if others:
        _rerank(env, "models", "promote", others[0])
        assert _one(db_url, "SELECT model_version FROM recsys.models WHERE status = 'champion'")[0] == others[0]
        _rerank(env, "models", "rollback")
        now = _one(db_url, "SELECT model_version FROM recsys.models WHERE status = 'champion'")
        assert now is None or now[0] != others[0]
    else:  # one model only: promote it again (a no-op), and rollback says there is nothing to go back to
        _rerank(env, "models", "promote", versions[0])
        assert _rerank(env, "models", "rollback", ok=False).returncode in (0, 1)

    # --- a live run whose files were deleted: one line, exit 1, the live lists untouched -------------------------
    live_run = _one(db_url, "SELECT run_id FROM recsys.publications WHERE live")[0]
    before = _one(db_url, "SELECT count(*), sum(item_id) FROM recsys.user_recommendations")
    shutil.rmtree(tmp_path / "home" / "runs" / live_run / "snapshot")
    _insert_views(db_url, other, fresh_items[1:])
    broken = _rerank(env, "refresh", "--once", ok=False)
    lines = [ln for ln in broken.stderr.splitlines() if ln.strip()]
    assert broken.returncode == 1 and len(lines) == 1 and live_run in lines[0], broken.stderr[-2000:]
    assert _one(db_url, "SELECT count(*), sum(item_id) FROM recsys.user_recommendations") == before

    # --- a tiny evaluate, and import of each format (each replaces the shop) -----------------------------------
    data = _write_datasets(tmp_path)
    ev = _rerank(env, "evaluate", "--format", "movielens", "--path", str(data["movielens"]), "--protocol",
                 "msr-stratified", "--models", "popularity,item-cf,nightly", "--out", str(tmp_path / "eval"))
    assert ev.returncode == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (tmp_path / "eval" / "recs_popularity.csv").exists()
    # the production run's published lists, scored as written: anyone recomputes the figure from the files
    from pipeline.metrics import ranking_metrics

    recs = pd.read_csv(tmp_path / "eval" / "recs_nightly.csv")
    test = pd.read_csv(tmp_path / "eval" / "test.csv")
    nightly_row = next(r for r in metrics["results"] if r["model"] == "nightly")
    assert len(recs) and recs.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()
    assert abs(ranking_metrics(test, recs, 10)["ndcg"] - nightly_row["ndcg@10"]) < 1e-9
    for fmt, path in data.items():
        args = ["import", fmt, str(path), "--replace"] + (["--mapping", '{"user_id": "uid"}'] if fmt == "csv" else [])
        line = _rerank(env, *args).stdout.strip().splitlines()[-1]
        assert line.startswith(f"imported {fmt}:") and "0 rows quarantined" in line, line
        assert _one(db_url, "SELECT count(*) FROM shop.events")[0] > 0


def _all(url: str, query: str) -> list[tuple]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()
