"""The nightly run without Airflow, end to end on a generated shop in a real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from pipeline.db.engine import connect
from pipeline.errors import QualityGateFailed, ValidationFailed
from pipeline.nightly import run_nightly
from pipeline.settings import load_settings

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.fixture
def shop(rerank_env: dict[str, str]) -> str:
    from pipeline.datagen import generate_shop

    url = rerank_env["RERANK_DATABASE_URL"]
    generate_shop(url, users=400, items=150, days=14, seed=7, end=AS_OF)
    return url


def _lists(url: str) -> pd.DataFrame:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id, rank, item_id, score, reason, source, run_id "
                    "FROM recsys.user_recommendations ORDER BY user_id, rank")
        return pd.DataFrame(cur.fetchall(), columns=["user_id", "rank", "item_id", "score", "reason", "source",
                                                     "run_id"])


def _settings(env: dict[str, str], **kw: object):
    base = {"database_url": env["RERANK_DATABASE_URL"], "home": env["RERANK_HOME"], "dask_workers": 1,
            "top_n": 20, "candidates": 60}
    return load_settings(**{**base, **kw})


def test_every_user_gets_a_full_list_with_reasons(shop: str, rerank_env: dict[str, str]) -> None:
    res = run_nightly(_settings(rerank_env, tune_priors=True), as_of=AS_OF)
    lists = _lists(shop)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.users WHERE created_at < %s", (AS_OF,))
        n_users = cur.fetchone()[0]
        cur.execute("SELECT status FROM recsys.runs WHERE run_id = %s", (res["run_id"],))
        assert cur.fetchone() == ("success",)
    sizes = lists.groupby("user_id").size()
    assert len(sizes) == n_users
    assert (sizes == 20).all()
    # The gate judged the lists against the run's top_n (a truncating stage would have failed it).
    assert (res["quality_gate"]["long_lists"], res["quality_gate"]["short_lists"]) == (0, 0.0)
    assert not lists.duplicated(["user_id", "item_id"]).any()
    assert lists["reason"].str.len().gt(0).all()
    assert set(lists["source"]) >= {"item-cf", "popularity"}
    # cf_build wrote the seq source's followers from the extracted (date-partitioned) snapshot
    snap = Path(rerank_env["RERANK_HOME"]) / "runs" / res["run_id"] / "snapshot"
    assert res["cf_build"]["follower_rows"] == len(pd.read_parquet(snap / "followers.parquet")) > 0
    assert res["cf_build"]["follower_events"] > 0 and len(list((snap / "events").glob("date=*"))) > 1
    seq = lists[lists["source"] == "seq"]
    assert len(seq) and seq["reason"].str.match("often (bought|viewed) after \u201c").all()
    assert lists["run_id"].nunique() == 1
    # Personal sources reach returning users: not everyone gets the same popularity list.
    assert lists.groupby("user_id")["item_id"].apply(tuple).nunique() > n_users // 4
    # train_ranker chose recall's priors on its holdout (pipeline.rank.tune); the run scores with them when it
    # orders by recall only, a model with its own; the refresh loads the same through load_artefacts
    import dataclasses
    import json

    from pipeline.extract.snapshot import read_events
    from pipeline.rank.model import RankerModel
    from pipeline.recommend import RecommendConfig, load_artefacts, recall

    trained = json.loads((snap.parent / "ranker.json").read_text())
    chosen = json.loads((snap.parent / "model.json").read_text())
    assert "base" in trained["prior_tuning"] and "reason" in trained["prior_tuning"]  # 400 users: no search
    assert chosen["recall_priors"] == trained["recall"]["priors"] == {}
    art = load_artefacts(snap, chosen["artifact_uri"])
    own = RankerModel.load(chosen["artifact_uri"]).metrics["recall_priors"] if chosen["artifact_uri"] else None
    assert art.priors == (own if chosen["artifact_uri"] else chosen["recall_priors"])
    users = lists["user_id"].unique()[:20]
    ev = read_events(snap, filters=[("user_id", "in", users.tolist())])
    ev = ev.assign(ts=pd.to_datetime(ev["ts"], utc=True))
    cfg = RecommendConfig(top_n=20, n_candidates=60)
    mine = recall(users, ev, dataclasses.replace(art, priors={"popularity": 1.0}), AS_OF, cfg)
    theirs = recall(users, ev, dataclasses.replace(art, priors={}), AS_OF, cfg)
    m, t = mine.set_index(["user_id", "item_id"]), theirs.set_index(["user_id", "item_id"])
    both = m.index.intersection(t.index)
    pop = m.loc[both, "sources"].str.contains("popularity").to_numpy()
    assert pop.sum() > 20 and (~pop).sum() > 20
    assert (m.loc[both[pop], "p_recall"] > t.loc[both[pop], "p_recall"]).all()  # popularity's prior 1.0, not 0.25
    assert (m.loc[both[~pop], "p_recall"] == t.loc[both[~pop], "p_recall"]).all()


def test_rerun_of_the_same_date_gives_the_same_lists(shop: str, rerank_env: dict[str, str]) -> None:
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    first = _lists(shop)
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    second = _lists(shop)
    pd.testing.assert_frame_equal(first, second)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM recsys.runs")
        assert cur.fetchone() == (1,)


def test_bad_rows_are_quarantined_and_counted(shop: str, rerank_env: dict[str, str]) -> None:
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.events SET event_type = 'teleport' WHERE event_id IN "
                    "(SELECT event_id FROM shop.events ORDER BY event_id LIMIT 3)")
        cur.execute("UPDATE shop.events SET item_id = 999999999 WHERE event_id IN "
                    "(SELECT event_id FROM shop.events WHERE event_type = 'view' ORDER BY event_id DESC LIMIT 2)")
    res = run_nightly(_settings(rerank_env), as_of=AS_OF)
    v = res["validate"]["shop.events"]
    assert v["quarantined"] == 5
    assert v["clean"] + v["quarantined"] == v["read"]
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT reason, count(*) FROM recsys.quarantine WHERE run_id = %s GROUP BY 1 ORDER BY 1",
                    (res["run_id"],))
        assert cur.fetchall() == [("event_type not in the allowed set", 3), ("item_id not in shop.items", 2)]


def test_failed_run_keeps_the_previous_publication_live(shop: str, rerank_env: dict[str, str]) -> None:
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    before = _lists(shop)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.events SET event_type = 'teleport' WHERE event_id % 10 = 0")
    # old events edited in place: only a full pass sees them (a nightly validates new event ids only)
    with pytest.raises(ValidationFailed, match="event_type not in the allowed set"):
        run_nightly(_settings(rerank_env, validate_full_every_days=0), as_of=datetime(2026, 11, 23, tzinfo=UTC))
    pd.testing.assert_frame_equal(before, _lists(shop))
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM recsys.runs WHERE run_id = 'nightly_20261123T0000'")
        assert cur.fetchone() == ("failed",)


def test_quality_gate_refusal_keeps_live_run(shop: str, rerank_env: dict[str, str]) -> None:
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    before = _lists(shop)
    # The whole catalogue goes out of stock: every list would be empty, the gate must refuse.
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.items SET in_stock = false")
    with pytest.raises(QualityGateFailed, match="users have an empty list"):
        run_nightly(_settings(rerank_env, top_n=20), as_of=datetime(2026, 11, 23, tzinfo=UTC))
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.items SET in_stock = true")
    pd.testing.assert_frame_equal(before, _lists(shop))


def test_reader_role_reads_lists_and_nothing_else(shop: str, rerank_env: dict[str, str]) -> None:
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    uid = int(_lists(shop)["user_id"].iloc[0])
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT item_id, reason FROM recsys.user_recommendations WHERE user_id = %s "
                    "ORDER BY rank LIMIT 10", (uid,))
        assert len(cur.fetchall()) == 10
        cur.execute("SELECT count(*) FROM recsys.similar_items")
        assert cur.fetchone()[0] > 0
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT * FROM recsys.publications")


def test_rollback_restores_previous_publication(shop: str, rerank_env: dict[str, str]) -> None:
    from pipeline.publish import rollback

    run_nightly(_settings(rerank_env), as_of=datetime(2026, 11, 23, tzinfo=UTC))
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    assert set(_lists(shop)["run_id"]) == {"nightly_20261124T0000"}
    rollback(shop)
    assert set(_lists(shop)["run_id"]) == {"nightly_20261123T0000"}


def test_read_view_hides_items_gone_out_of_stock_and_bought(shop: str, rerank_env: dict[str, str]) -> None:
    run_nightly(_settings(rerank_env), as_of=AS_OF)
    lists = _lists(shop)
    uid, first_item = int(lists["user_id"].iloc[0]), int(lists["item_id"].iloc[0])
    second_item = int(lists["item_id"].iloc[1])
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.items SET in_stock = false WHERE item_id = %s", (first_item,))
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, quantity, ts) "
                    "SELECT max(event_id) + 1, %s, %s, 'purchase', 1, %s FROM shop.events",
                    (uid, second_item, AS_OF))
    after = _lists(shop)
    mine = after[after["user_id"] == uid]["item_id"].tolist()
    assert first_item not in mine and second_item not in mine
    assert len(mine) == 18


def test_a_user_who_bought_nearly_everything_gets_what_is_left_and_one_who_bought_all_blocks_nothing(
        shop: str, rerank_env: dict[str, str]) -> None:
    """A heavy buyer can exhaust every candidate recall proposes: the lists fill from the popular items still
    eligible. A user who bought every item has nothing to be shown; the gate used to count that empty list
    and refuse the whole run, leaving every user's lists stale."""
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id FROM shop.users WHERE created_at < %s ORDER BY user_id LIMIT 2",
                    (AS_OF - pd.Timedelta(days=2),))
        all_buyer, most_buyer = (r[0] for r in cur.fetchall())
        cur.execute("SELECT item_id FROM shop.items WHERE in_stock AND visible AND created_at < %s "
                    "ORDER BY item_id DESC LIMIT 5", (AS_OF - pd.Timedelta(days=2),))
        left = sorted(r[0] for r in cur.fetchall())
        for uid, skip in ((all_buyer, []), (most_buyer, left)):
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, quantity, ts) "
                        "SELECT (SELECT max(event_id) FROM shop.events) + row_number() OVER (ORDER BY item_id), "
                        "%s, item_id, 'purchase', 1, %s FROM shop.items WHERE NOT item_id = ANY(%s)",
                        (uid, AS_OF - pd.Timedelta(days=1), skip))
    res = run_nightly(_settings(rerank_env), as_of=AS_OF)
    lists = _lists(shop)
    assert all_buyer not in set(lists["user_id"])
    assert sorted(lists.loc[lists["user_id"] == most_buyer, "item_id"]) == left
    assert res["score_users"]["exhausted_users"] == 1
    assert res["quality_gate"]["exhausted_users"] == 1 and res["quality_gate"]["empty_lists"] == 0
    assert lists["user_id"].nunique() == res["quality_gate"]["users"] - 1


def test_stage_figures_are_recorded_in_runs(shop: str, rerank_env: dict[str, str]) -> None:
    res = run_nightly(_settings(rerank_env), as_of=AS_OF)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT stats->'stages' FROM recsys.runs WHERE run_id = %s", (res["run_id"],))
        stages = cur.fetchone()[0]
    assert set(stages) == {"validate", "extract", "item_features", "user_features", "cf_build", "train_ranker",
                           "evaluate_gate", "score_users", "quality_gate", "publish"}
    assert stages["score_users"]["rows"] == res["score_users"]["rows"]
    assert all(v["seconds"] >= 0 for v in stages.values())
    # RERANK_TUNE_PRIORS is off by default: nothing searched, the configured priors score
    import json

    run = Path(rerank_env["RERANK_HOME"]) / "runs" / res["run_id"]
    assert "prior_tuning" not in json.loads((run / "ranker.json").read_text())
    assert json.loads((run / "model.json").read_text())["recall_priors"] == {}


def test_a_brand_new_shop_without_events_gets_its_first_lists(rerank_env: dict[str, str]) -> None:
    """Day one of a shop: users and items, no behaviour yet. Every list is the popularity fallback, which the
    gate's fallback_share check refused, so nothing was ever published and readers had no lists at all."""
    from pipeline.datagen import generate_shop

    db_url = rerank_env["RERANK_DATABASE_URL"]
    generate_shop(db_url, users=60, items=80, days=3, seed=2, end=AS_OF)
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM shop.events")
    res = run_nightly(_settings(rerank_env), as_of=AS_OF)
    gate = res["quality_gate"]
    assert gate["fallback_share"] > 0.9 and gate["fallback_share_enforced"] is False
    lists = _lists(db_url)
    assert lists["user_id"].nunique() == gate["users"] > 0
    assert set(lists["source"]) <= {"popularity", "trending", "category", "explore"}


def test_shards_follow_the_budget_and_a_small_budget_gives_the_same_lists(shop: str,
                                                                         rerank_env: dict[str, str]) -> None:
    """The shard count follows RERANK_SHARD_USERS, not the user count; each shard writes its own part; lists
    scored in shards of 7 users equal those scored in one shard (order and items; scores within rounding)."""
    from pathlib import Path

    from pipeline import nightly
    from pipeline.publish.parts import rec_parts
    from pipeline.settings import use_settings

    res = run_nightly(_settings(rerank_env, shard_users=100_000), as_of=AS_OF)
    assert res["score_users"]["shards"] == 1
    # user_features split the events by shard; scoring read that layout instead of splitting them again
    assert res["score_users"]["events_layout_reused"] is True
    assert res["user_features"]["events_sharded"] == res["score_users"]["events_sharded"] > 0
    run_dir = Path(rerank_env["RERANK_HOME"]) / "runs" / res["run_id"]
    one = pd.concat([pd.read_parquet(p) for p in rec_parts(run_dir)], ignore_index=True)
    s = _settings(rerank_env, shard_users=7)
    with use_settings(s):
        out = nightly.score_users(str(run_dir.parents[1]), res["run_id"], AS_OF, top_n=20, n_candidates=60,
                                  url=shop)
    n_users = one["user_id"].nunique()
    assert out["shards"] == -(-n_users // 7) and out["shard_users"] == 7
    assert out["events_layout_reused"] is False  # other bounds: the events were split again
    parts = rec_parts(run_dir)
    assert len(parts) == out["shards"]
    assert max(pd.read_parquet(p, columns=["user_id"])["user_id"].nunique() for p in parts) <= 7
    many = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    key = ["user_id", "rank", "item_id", "reason", "source", "variant"]
    pd.testing.assert_frame_equal(one[key].reset_index(drop=True), many[key].reset_index(drop=True))
    # scores are written to 6 places: a sum taken in another order may round one unit apart
    assert (one["score"] - many["score"]).abs().max() < 1.5e-6


def test_the_runs_user_features_equal_a_recompute_from_the_users_events(shop: str, rerank_env: dict[str, str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the nightly shard hands the ranker (the run's user_features parts, read for a few users by an
    Arrow filter) equals what the ranker computes from those users' events at as_of with the same functions
    (the refresh's path), within float tolerance; so do the model's inputs and scores."""
    import numpy as np

    from pipeline.extract.snapshot import read_events
    from pipeline.features.users import read_user_features_of
    from pipeline.rank.features import PROFILE_COLUMNS, PROFILE_FEATURES, UserProfile, user_profile_at
    from pipeline.rank.model import RankerModel
    from pipeline.recommend import load_artefacts
    from pipeline.runs import run_dir

    s = _settings(rerank_env)
    res = run_nightly(s, as_of=AS_OF)
    snap = run_dir(s.home_path, res["run_id"]) / "snapshot"
    model = RankerModel.load(res["train_ranker"]["artifact_uri"])
    assert set(PROFILE_FEATURES) <= set(model.space.numeric)
    all_users = pd.read_parquet(snap / "users.parquet", columns=["user_id"])["user_id"].to_numpy()
    users = np.sort(all_users)[::7]
    parts = read_user_features_of(snap, users, list(PROFILE_COLUMNS))
    assert sorted(parts["user_id"]) == sorted(users) and list(parts.columns) == list(PROFILE_COLUMNS)
    ev = read_events(snap, filters=[("user_id", "in", users.tolist())])
    ev = ev.assign(ts=pd.to_datetime(ev["ts"], utc=True))
    items = load_artefacts(snap).item_feats
    # recommend() scores at as_of + 1 s (events stamped as_of count): ages differ by that second only
    again = user_profile_at(ev, users, pd.Timestamp(AS_OF) + pd.Timedelta(seconds=1), items,
                            model.config.event_weights, model.config.half_life_days)
    a = parts.sort_values("user_id").reset_index(drop=True)
    b = again.sort_values("user_id").reset_index(drop=True)
    assert (a["events"] > 0).sum() > len(users) // 2 and (a["events"] == 0).any()  # both kinds of user
    for c in ("user_id", "events", "purchases", "n_view", "n_click", "n_add_to_cart", "n_purchase", "n_search",
              "sessions", "items"):
        assert a[c].tolist() == b[c].tolist(), c
    for c in ("monetary", "price_mean", "recency_days"):
        np.testing.assert_allclose(a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float), rtol=1e-6, atol=2e-5,
                                   equal_nan=True, err_msg=c)
    cand = pd.DataFrame({"user_id": np.repeat(users, 5),
                         "item_id": np.tile(items["item_id"].to_numpy()[:5], len(users)),
                         "source": "popularity", "recall_score": 0.5, "p_recall": 0.2})
    pa = UserProfile.of(a, items).features(cand["user_id"].to_numpy(), cand["item_id"].to_numpy())
    pb = UserProfile.of(b, items).features(cand["user_id"].to_numpy(), cand["item_id"].to_numpy())
    np.testing.assert_allclose(pa, pb, rtol=1e-6, atol=2e-5)  # recency: log1p of days one second apart
    at = pd.Timestamp(AS_OF) + pd.Timedelta(seconds=1)
    np.testing.assert_allclose(model.score(cand, ev, items, at, user_feats=parts), model.score(cand, ev, items, at),
                               rtol=1e-4, atol=1e-9)
    # The shard path hands the parts to the ranker: it computes nobody's features itself.
    from pipeline.nightly import recommend_shard

    def no_recompute(events, users, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        assert not len(users), f"recomputed users {users} the run's parts hold"
        return user_profile_at(events, users, *a, **k)

    monkeypatch.setattr("pipeline.rank.model.user_profile_at", no_recompute)
    lists, _ = recommend_shard(users, ev, snap, AS_OF, top_n=s.top_n, n_candidates=s.candidates,
                               recent_days=s.recent_days, weights=s.event_weights, half_life=s.half_life_days,
                               artifact_uri=res["train_ranker"]["artifact_uri"])
    assert lists["user_id"].nunique() == len(users)
