"""``ranker``, ``research-stack`` and ``seq-knn`` in the evaluation harness: the model contract, a sequence
known-answer problem (A -> B -> C), CPU determinism, leave-one-out's ordered history, and the
``rerank evaluate --format amazon-s3rec`` path on a tiny synthetic file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_models_contract import ModelContract

from pipeline.evaluate import ranker as rank_evaluate
from pipeline.evaluate.models import get_model
from pipeline.evaluate.runner import evaluate_frames
from pipeline.frames import ShopFrames
from pipeline.recall.sequential import ordered_sequences, transition_matrix

#: Small and fast: no early stopping (tiny data has nothing to hold out), full softmax, no dropout.
RANKER = {"dim": 16, "layers": 1, "seq_len": 5, "dropout": 0.0, "lr": 0.01, "batch_size": 8, "n_neg": 0,
          "max_epochs": 60, "early_stopping": False, "sources": {"item-cf": {}, "seq-knn": {}, "popularity": {}}}
#: No fusion tuning here: its inner holdout would take every chain's last item out of training.
PIPELINE = {**RANKER, "mmr_lambda": 1.0, "tune": False}


class TestRanker(ModelContract):
    name = "ranker"
    params = RANKER


class TestPipeline(ModelContract):
    name = "research-stack"
    params = PIPELINE


class TestPipelineWithMMR(ModelContract):
    name = "research-stack"
    params = {**PIPELINE, "mmr_lambda": 0.5, "use_ranker": False}
    first_for_3 = first_for_6 = None  # MMR may move the best item down; the contract still holds


class TestSeqKNN(ModelContract):
    name = "seq-knn"


# -- the sequence problem: chains 1->2->3, 4->5->6, 7->8->9 after a random prefix ---------------------------
def _chains(n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        chain = [(1, 2, 3), (4, 5, 6), (7, 8, 9)][u % 3]
        seq = [int(x) for x in rng.choice(np.arange(20, 30), size=2, replace=False)] + list(chain)
        rows += [(u, item, t) for t, item in enumerate(seq)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "t"])
    df["ts"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(df["t"], unit="D")
    # rows shuffled: the order must come from ts, not from the input order
    return df.drop(columns="t").sample(frac=1.0, random_state=1).reset_index(drop=True)


def _next_item(model_name: str, params: dict) -> dict[int, int]:
    train = _chains()
    m = get_model(model_name, **params).fit(train)
    # held-out users whose histories end in A, B: the answer is C
    hist = pd.DataFrame({"user_id": [1000, 1000, 1000, 1001, 1001, 1001],
                         "item_id": [25, 1, 2, 21, 7, 8],
                         "ts": pd.Timestamp("2024-02-01", tz="UTC") + pd.to_timedelta(np.arange(6), unit="D")})
    # the users are new to the model: score them as known users 0 and 2 with a supplied ordered history
    m.set_history(hist.replace({"user_id": {1000: 0, 1001: 2}}))
    h = m.matrix(hist.replace({"user_id": {1000: 0, 1001: 2}}))
    rows, _ = m._rows(np.array([0, 2]))
    recs = m.recommend([0, 2], k=3, history=h[rows])
    return recs[recs["rank"] == 1].set_index("user_id")["item_id"].to_dict()


@pytest.mark.parametrize(("name", "params"), [("ranker", RANKER), ("research-stack", PIPELINE), ("seq-knn", {})])
def test_known_next_item(name: str, params: dict) -> None:
    assert _next_item(name, params) == {0: 3, 2: 9}


def test_ranker_deterministic_on_cpu() -> None:
    train = _chains()
    a = get_model("ranker", **RANKER, device="cpu").fit(train).score([0, 1, 2])
    rank_evaluate._TRAINED.clear()  # train again, not reuse the cached net
    b = get_model("ranker", **RANKER, device="cpu").fit(train).score([0, 1, 2])
    np.testing.assert_array_equal(a, b)


def test_candidates_rank_above_the_rest() -> None:
    m = get_model("ranker", **{**RANKER, "n_per_source": 2, "sources": {"seq-knn": {}}}).fit(_chains())
    s = m.score([0])[0]
    mask, _ = m.recall.candidates(np.array([0]), None, m.user_items[[m._rows(np.array([0]))[0][0]]])
    assert mask.sum() == 2
    assert s[mask[0]].min() > s[~mask[0]].max()


def test_early_stopping_uses_the_validation_item() -> None:
    train = _chains()
    m = get_model("ranker", **{**RANKER, "early_stopping": True, "max_epochs": 4, "eval_every": 1, "patience": 9})
    valid = pd.DataFrame({"user_id": [0, 1], "item_id": [3, 6]})
    m.set_validation(valid)
    m.fit(train)
    assert [r["epoch"] for r in m.ranker.history if "valid_ndcg@10" in r] == [1, 2, 3, 4]


def test_sequences_follow_ts_and_transitions_follow_order() -> None:
    df = _chains(3)
    items = np.sort(df["item_id"].unique())
    seqs = ordered_sequences(df, items)
    assert items[seqs[0]][-3:].tolist() == [1, 2, 3]
    T = transition_matrix(list(seqs.values()), len(items), window=1)
    i1, i2 = np.searchsorted(items, [1, 2])
    assert T[i1, i2] > 0 and T[i2, i1] == 0


def chain_frames(n_users: int) -> ShopFrames:
    """Each user: one whole chain, then the first two items of the next: train holds every A -> B -> C,
    leave-one-out's validation item is B', its test item C'."""
    chains = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    rows = [(u, item) for u in range(n_users) for item in (*chains[u % 3], *chains[(u + 1) % 3])]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(
        event_id=lambda d: np.arange(1, len(d) + 1), event_type="purchase",
        ts=lambda d: pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(d["event_id"], unit="h"))
    return ShopFrames(users=pd.DataFrame({"user_id": ev["user_id"].unique()}),
                      items=pd.DataFrame({"item_id": np.sort(ev["item_id"].unique())}), events=ev,
                      rejects=pd.DataFrame(), name="chains")


def test_leave_one_out_harness_with_the_ranker(tmp_path: Path) -> None:
    frames = chain_frames(30)
    m = evaluate_frames(frames, protocol="leave-one-out", models=["ranker", "research-stack"], out_dir=tmp_path,
                        dataset="chains", model_params={"ranker": {**RANKER, "early_stopping": True},
                                                        "research-stack": {**PIPELINE, "tune": True}})
    res = {r["model"]: r for r in m["results"]}
    # C' is fully determined by B'
    assert res["ranker"]["hr@10"] == 1.0 and res["research-stack"]["hr@10"] == 1.0
    assert res["ranker"]["ndcg@10"] > 0.9
    details = json.loads((tmp_path / "details.json").read_text())
    assert {v["model"] for v in details["valid"]} == {"ranker", "research-stack"}


def test_cli_amazon_s3rec_leave_one_out(tmp_path: Path, db_url: str) -> None:
    # as above: a whole chain, then A', B' (validation), C' (test); some noise items first
    rng = np.random.default_rng(3)
    chains = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    lines = []
    for u in range(1, 41):
        pre = rng.choice(np.arange(10, 25), size=2, replace=False)
        lines.append(" ".join(map(str, [u, *pre, *chains[u % 3], *chains[(u + 1) % 3]])))
    path = tmp_path / "Tiny.txt"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    env = {**os.environ, "RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(tmp_path / "home")}
    rerank = str(Path(sys.executable).with_name("rerank"))
    proc = subprocess.run([rerank, "evaluate", "--format", "amazon-s3rec", "--path", str(path), "--protocol",
                           "leave-one-out", "--models", "ranker,research-stack", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "Tiny" and metrics["protocol"] == "leave-one-out"
    assert {r["model"] for r in metrics["results"]} == {"ranker", "research-stack"}
    for r in metrics["results"]:
        assert 0.0 <= r["ndcg@10"] <= 1.0 and r["hr@10"] > 0.5


class TestEASE(ModelContract):
    name = "ease"
    params = {"l2": 1.0}


def test_ease_refuses_a_huge_catalogue() -> None:
    from pipeline.errors import ModelError

    with pytest.raises(ModelError, match="max_items"):
        get_model("ease", max_items=3).fit(_chains())
