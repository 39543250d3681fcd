"""The output quality gate: each check passes on good lists and fails, by name, on a bad one, whether the
lists come as one frame (check_output) or as parts reduced one by one (check_parts); and the parts' reduced
figures equal the one-frame figures on the same lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError, QualityGateFailed
from pipeline.publish import CHECKS, GateThresholds, check_output
from pipeline.publish.gate import check_parts, churn_against


def _items(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"item_id": np.arange(1, n + 1), "in_stock": True, "visible": True,
                         "category": [f"C{i % 4}" for i in range(n)]})


def _recs(users: int = 4, k: int = 5, shift: int = 0) -> pd.DataFrame:
    rows = [(u, r, (u + r + shift) % 20 + 1, "item-cf", "because you viewed \u201cX\u201d")
            for u in range(1, users + 1) for r in range(1, k + 1)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "source", "reason"]).assign(variant="control")


USERS = pd.Series([1, 2, 3, 4])
Gate = Callable[..., dict]
Fails = Callable[..., QualityGateFailed]


def _split(recs: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """Parts holding disjoint users' whole lists, as the scoring shards write them (some may be empty)."""
    return [recs[recs["user_id"] % n == i] for i in range(n)]


def _in_parts(recs: pd.DataFrame, **kw: object) -> dict:
    return check_parts(_split(recs, 3), **kw)


@pytest.fixture(params=["frame", "parts"])
def gate(request: pytest.FixtureRequest) -> Gate:
    """Each check runs through the one-frame gate and through the gate over parts."""
    return check_output if request.param == "frame" else _in_parts


@pytest.fixture
def fails(gate: Gate) -> Fails:
    def fails(recs: pd.DataFrame, check: str, items: pd.DataFrame | None = None, **kw: object) -> QualityGateFailed:
        with pytest.raises(QualityGateFailed) as info:
            gate(recs, users=kw.pop("users", USERS), items=_items() if items is None else items, **kw)
        assert info.value.failed_checks == [check]
        assert f"[{check}]" in str(info.value)
        return info.value

    return fails


def test_good_lists_pass_with_figures(gate: Gate) -> None:
    fig = gate(_recs(), users=USERS, items=_items(), live=_recs())
    assert fig["empty_lists"] == 0 and fig["duplicate_items"] == 0 and fig["unavailable_items"] == 0
    assert fig["coverage"] == pytest.approx(8 / 20) and fig["fallback_share"] == 0.0
    assert fig["churn"] == 0.0 and fig["variants"] == {"control": 4}
    assert 0 < fig["diversity"] <= 1
    assert set(CHECKS) <= set(fig)


def test_empty_lists(gate: Gate, fails: Fails) -> None:
    fails(_recs(), "empty_lists", users=pd.Series([1, 2, 3, 4, 5]))
    gate(_recs(), users=pd.Series([1, 2, 3, 4, 5]), items=_items(), thresholds={"max_empty_lists": 1})


def test_exhausted_users_are_reported_not_counted_as_empty(gate: Gate, fails: Fails) -> None:
    """A user with nothing eligible left (bought every available item) has an empty list by right: it must
    not refuse everyone's run. Any other user without a list still fails the check."""
    users = pd.Series([1, 2, 3, 4, 5])
    fig = gate(_recs(), users=users, items=_items(), exhausted=pd.Series([5]))
    assert fig["empty_lists"] == 0 and fig["exhausted_users"] == 1
    err = fails(_recs(), "empty_lists", users=pd.Series([1, 2, 3, 4, 5, 6]), exhausted=pd.Series([5]))
    assert err.figures["empty_lists"] == 1 and err.figures["exhausted_users"] == 1
    # a listed user named exhausted is not counted twice
    assert gate(_recs(), users=USERS, items=_items(), exhausted=pd.Series([1]))["exhausted_users"] == 0


def test_duplicate_items(fails: Fails) -> None:
    r = _recs()
    r.loc[1, "item_id"] = r.loc[0, "item_id"]
    fails(r, "duplicate_items")


def test_bad_ranks(gate: Gate, fails: Fails) -> None:
    r = _recs()
    r.loc[r["user_id"] == 2, "rank"] = [1, 2, 4, 5, 6]  # a gap: a reader's LIMIT 5 sees four items
    err = fails(r, "bad_ranks")
    assert err.figures["bad_ranks"] == 1
    r = _recs()
    r.loc[(r["user_id"] == 3) & (r["rank"] == 2), "rank"] = 1  # a repeat
    fails(r, "bad_ranks")
    shuffled = _recs().sample(frac=1.0, random_state=0)  # row order is not rank order: fine
    assert gate(shuffled, users=USERS, items=_items())["bad_ranks"] == 0


def test_bad_scores(fails: Fails) -> None:
    r = _recs().assign(score=1.0)
    r.loc[0, "score"] = np.nan
    r.loc[1, "score"] = np.inf  # an infinite boost factor
    assert fails(r, "bad_scores").figures["bad_scores"] == 2


def test_unavailable_items(fails: Fails) -> None:
    items = _items()
    items.loc[items["item_id"] == 3, "in_stock"] = False  # user 1 rank 1 holds item 3
    fails(_recs(), "unavailable_items", items=items)
    items = _items()
    items.loc[items["item_id"] == 3, "visible"] = False
    fails(_recs(), "unavailable_items", items=items)


def test_missing_reasons(fails: Fails) -> None:
    r = _recs()
    r.loc[2, "reason"] = " "
    fails(r, "missing_reasons")


def test_coverage(fails: Fails) -> None:
    fails(_recs(), "coverage", thresholds={"min_coverage": 0.5})


def test_fallback_share(gate: Gate, fails: Fails) -> None:
    r = _recs().assign(source="popularity")
    fails(r, "fallback_share")
    gate(r, users=USERS, items=_items(), thresholds={"max_fallback_share": 1.0})


def test_diversity(gate: Gate, fails: Fails) -> None:
    items = _items().assign(category="same")
    err = fails(_recs(), "diversity", items=items, thresholds={"min_diversity": 0.2})
    assert err.figures["diversity"] == 0.0
    fig = gate(_recs(), users=USERS, items=_items(), thresholds={"min_diversity": 0.2})
    assert fig["diversity"] >= 0.2


def test_diversity_over_embeddings(fails: Fails) -> None:
    ids = np.arange(1, 21)
    same = (ids, np.ones((20, 3), dtype=np.float32))
    fails(_recs(), "diversity", thresholds={"min_diversity": 0.1}, item_embeddings=same)


def test_churn_against_live_run(fails: Fails) -> None:
    live = pd.DataFrame({"user_id": [1, 1, 2, 2, 9], "item_id": [1, 2, 1, 2, 5]})
    new = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 3, 3, 4]})
    # user 1: |{1}| / |{1,2,3}| = 1/3; user 2: 0; user 9 is not in the new run
    assert churn_against(new, live) == pytest.approx(1 - (1 / 3) / 2)
    assert churn_against(new, live.assign(user_id=99)) is None
    fails(_recs(), "churn", live=_recs(shift=7), thresholds={"max_churn": 0.5})


def test_several_failures_are_all_named(gate: Gate) -> None:
    with pytest.raises(QualityGateFailed) as info:
        gate(_recs().assign(source="popularity"), users=pd.Series([1, 2, 3, 4, 5]), items=_items())
    assert info.value.failed_checks == ["empty_lists", "fallback_share"]


def test_unknown_threshold_fails_fast() -> None:
    with pytest.raises(ConfigError, match="max_empty"):
        GateThresholds.from_dict({"max_empty": 3})


def test_lists_longer_than_top_n_fail(gate: Gate, fails: Fails) -> None:
    assert gate(_recs(k=5), users=USERS, items=_items(), top_n=5)["long_lists"] == 0
    err = fails(_recs(k=6), "long_lists", top_n=5)
    assert err.figures["long_lists"] == 4 and "top_n=5" in str(err)


def test_truncated_lists_fail_but_a_few_short_ones_pass(gate: Gate, fails: Fails) -> None:
    """A stage that cuts every list short is refused; a minority of short lists (users who bought most of the
    catalogue) passes; a catalogue smaller than top_n asks only for what is available."""
    err = fails(_recs(k=3), "short_lists", top_n=5)
    assert err.figures["short_lists"] == 1.0
    one_short = _recs(k=5)
    one_short = one_short[~((one_short["user_id"] == 1) & (one_short["rank"] > 3))]
    assert gate(one_short, users=USERS, items=_items(), top_n=5)["short_lists"] == 0.25
    small = _recs(k=5).assign(item_id=lambda d: d["rank"])  # every list holds the whole 5-item catalogue
    assert gate(small, users=USERS, items=_items(5), top_n=10)["short_lists"] == 0.0
    assert gate(_recs(k=3), users=USERS, items=_items(), top_n=5,
                        thresholds={"max_short_share": 1.0})["short_lists"] == 1.0
    assert "short_lists" in gate(_recs(k=3), users=USERS, items=_items())  # no top_n: not judged


def test_all_fallback_lists_pass_only_while_nothing_is_published(gate: Gate, fails: Fails) -> None:
    """A new shop's first run has no history, so every list is the popularity fallback. With a live run the
    gate keeps it instead (personal sources broke); with nothing live, refusing leaves users with no list."""
    cold = _recs().assign(source="popularity")
    fails(cold, "fallback_share")
    fig = gate(cold, users=USERS, items=_items(), nothing_live=True)
    assert fig["fallback_share"] == 1.0 and fig["fallback_share_enforced"] is False
    fails(cold.assign(reason=None), "missing_reasons", nothing_live=True)  # the other checks still hold


def _random_lists(seed: int, users: int = 300, items: int = 120, top: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lists with a bit of everything the gate counts: short and long lists, repeats, bad ranks and scores,
    unavailable items, missing reasons, fallback rows, two variants, users without a list."""
    rng = np.random.default_rng(seed)
    rows = []
    alike = np.arange(1, items + 1)[np.arange(items) % 21 == 0]  # items with the same category labels
    for u in range(1, users + 1):
        if rng.random() < 0.05:
            continue  # no list
        n = int(rng.choice([top, top, top, top - 3, top + 1]))
        pool = alike if u <= users // 3 else np.arange(1, items + 1)  # the first users' lists: no diversity
        its = rng.choice(pool, size=n, replace=rng.random() < 0.05 or len(pool) < n)
        ranks = np.arange(1, n + 1)
        if rng.random() < 0.03:
            ranks[-1] += 1  # a gap
        rows += [(u, int(r), int(i)) for r, i in zip(ranks, its, strict=True)]
    recs = pd.DataFrame(rows, columns=["user_id", "rank", "item_id"])
    m = len(recs)
    recs["score"] = np.where(rng.random(m) < 0.01, np.nan, rng.random(m))
    recs["reason"] = np.where(rng.random(m) < 0.01, " ", "because")
    recs["source"] = rng.choice(["item-cf", "als", "popularity"], size=m)
    recs["variant"] = recs["user_id"].map(lambda u: "control" if u % 3 else "b")
    cat = pd.DataFrame({"item_id": np.arange(1, items + 1), "in_stock": rng.random(items) > 0.05, "visible": True,
                        "category": [f"A>{i % 7}|B>{i % 3}" for i in range(items)]})
    return recs.sample(frac=1.0, random_state=seed), cat


def _split_ranges(recs: pd.DataFrame, cuts: list[int]) -> list[pd.DataFrame]:
    """Parts by user-id range, of uneven sizes and make-up (the per-part means differ)."""
    edges = [0, *cuts, int(recs["user_id"].max()) + 1]
    return [recs[(recs["user_id"] >= lo) & (recs["user_id"] < hi)] for lo, hi in zip(edges, edges[1:], strict=False)]


@pytest.mark.parametrize("cuts", [[], [40, 60, 250], [10, 20, 30, 100, 101, 200]])
@pytest.mark.parametrize("embeddings", [False, True])
def test_reduced_figures_equal_the_one_frame_figures(cuts: list[int], embeddings: bool) -> None:
    """The same lists, whole or split into parts of disjoint users: every figure agrees (floats to 1e-4, the
    rounding of the figures; the parts' diversity and churn are weighted means of the parts' means, and the
    parts differ: the first users' lists have no diversity and did not change since the live run)."""
    recs, items = _random_lists(seed=len(cuts))
    other, _ = _random_lists(seed=99)
    live = pd.concat([recs[recs["user_id"] <= 100], other[other["user_id"] > 100]])
    ids = items["item_id"].to_numpy()
    vectors = np.eye(21)[ids % 21] + 0.05 * np.random.default_rng(0).normal(size=(len(ids), 21))  # like categories
    emb = (ids, vectors) if embeddings else None
    users = pd.Series(np.arange(1, 311))  # 301..310 and the skipped ones have no list
    exhausted = pd.Series([5, 300, 305])
    kw = {"users": users, "items": items, "live": live[["user_id", "item_id"]], "top_n": 10,
          "exhausted": exhausted, "item_embeddings": emb,
          "thresholds": {"max_empty_lists": 10**6, "max_duplicate_items": 10**6, "max_bad_ranks": 10**6,
                         "max_bad_scores": 10**6, "max_long_lists": 10**6, "max_short_share": 1.0,
                         "max_unavailable_items": 10**6, "max_missing_reasons": 10**6, "max_fallback_share": 1.0}}
    whole = check_output(recs, **kw)
    parts = check_parts(_split_ranges(recs, cuts), **kw)
    assert whole["duplicate_items"] > 0 and whole["bad_ranks"] > 0 and whole["long_lists"] > 0  # not vacuous
    assert whole["unavailable_items"] > 0 and whole["empty_lists"] > 0 and whole["exhausted_users"] > 0
    assert 0.2 < whole["diversity"] < 0.8 and 0.2 < whole["churn"] < 0.9
    for key, value in whole.items():
        if isinstance(value, float):
            assert parts[key] == pytest.approx(value, abs=1.01e-4), key
        else:
            assert parts[key] == value, key


def test_parts_are_read_from_parquet_one_at_a_time_and_the_legacy_file_is_one_part(tmp_path: Path) -> None:
    from pipeline.publish.parts import rec_parts

    recs, items = _random_lists(seed=3)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError):
        rec_parts(run)
    recs.sort_values(["user_id", "rank"]).to_parquet(run / "recs.parquet", index=False)
    assert rec_parts(run) == [run / "recs.parquet"]
    (run / "recs").mkdir()
    for i, part in enumerate(_split(recs, 3)):
        part.sort_values(["user_id", "rank"]).to_parquet(run / "recs" / f"part-{i:05d}.parquet", index=False)
    (run / "recs" / ".part-00009.parquet.tmp-1-x").write_text("half")  # a shard still writing: skipped
    assert [p.name for p in rec_parts(run)] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    kw = {"users": pd.Series(recs["user_id"].unique()), "items": items, "top_n": 10,
          "thresholds": {"max_duplicate_items": 10**6, "max_bad_ranks": 10**6, "max_bad_scores": 10**6,
                         "max_long_lists": 10**6, "max_short_share": 1.0, "max_unavailable_items": 10**6,
                         "max_missing_reasons": 10**6, "max_fallback_share": 1.0}}
    from_files = check_parts(rec_parts(run), **kw)
    assert from_files == check_parts([run / "recs.parquet"], **kw)
    assert from_files["rows"] == len(recs)


def test_gate_on_dask_reads_the_vectors_by_path_and_keeps_its_context_as_a_task(tmp_path: Path) -> None:
    """On a cluster the gate's context is a task, not scattered data (a worker lost mid-gate has it recomputed;
    scattered data was "already forgotten" at tier L), and the item vectors travel as the path of the run's
    file, read once per worker: the figures equal the loop's over the same lists with the vectors in memory.
    After a worker restart the context task is recomputed where scattered data is gone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.dask_client import dask_client
    from pipeline.publish.gate import _same, release_caches
    from pipeline.settings import load_settings

    recs, items = _random_lists(seed=5)
    ids = items["item_id"].to_numpy()
    vectors = (np.eye(21)[ids % 21] + 0.05 * np.random.default_rng(0).normal(size=(len(ids), 21))).astype("float32")
    path = tmp_path / "item_embeddings.parquet"
    pq.write_table(pa.table({"item_id": ids, "embedding": list(vectors)}), path)
    paths = []
    for i, part in enumerate(_split(recs, 4)):
        paths.append(tmp_path / f"part-{i}.parquet")
        part.sort_values(["user_id", "rank"]).to_parquet(paths[-1], index=False)
    kw = {"users": pd.Series(np.arange(1, 301)), "items": items, "top_n": 10,
          "thresholds": {"max_empty_lists": 10**6, "max_duplicate_items": 10**6, "max_bad_ranks": 10**6,
                         "max_bad_scores": 10**6, "max_long_lists": 10**6, "max_short_share": 1.0,
                         "max_unavailable_items": 10**6, "max_missing_reasons": 10**6, "max_fallback_share": 1.0}}
    in_memory = check_parts(paths, item_embeddings=(ids, vectors), **kw)
    assert 0.2 < in_memory["diversity"] < 0.8
    assert check_parts(paths, item_embeddings=path, **kw) == in_memory  # the loop reads the file once
    release_caches()
    no_file = check_parts(paths, item_embeddings=tmp_path / "absent.parquet", **kw)
    assert no_file["diversity"] != in_memory["diversity"]  # over categories, not vectors
    with dask_client(load_settings(dask_workers=1, dask_address=None)) as client:
        assert check_parts(paths, item_embeddings=path, client=client, **kw) == in_memory
        scattered, as_task = client.scatter([7]), client.submit(_same, [7], pure=False)
        assert as_task.result(timeout=30) == [7]
        client.restart_workers(list(client.scheduler_info()["workers"]))
        assert as_task.result(timeout=30) == [7]  # recomputed on the new worker
        with pytest.raises(Exception, match="lost|forgotten|cancel"):  # what the scattered context met
            scattered[0].result(timeout=30)
        assert check_parts(paths, item_embeddings=path, client=client, **kw) == in_memory
