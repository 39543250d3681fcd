"""Where a nightly's published lists lose against its ranker's holdout: the published path again, on a kept run.

    python research/gap_sports.py HOME EVAL_OUT [--users 4000] [--retrain] [--sample N]

``HOME`` is the RERANK_HOME an evaluation kept (``rerank evaluate --models nightly`` removes it; keep it by hand),
``EVAL_OUT`` that evaluation's ``--out`` folder (its ``test.csv`` holds the item each user is scored on). For a
sample of ``--users`` scored users this runs :func:`pipeline.recommend.recommend` on the run's artefacts with the
run's ranker and with recall-only order, and prints the nDCG@10 of both; ``--retrain`` also trains a ranker with
the current training windows on the run's snapshot (``--sample`` users, default the run's) and scores with it.
Run it on validation files only (Sports_valid.txt: each line's last item dropped).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import pandas as pd

    from pipeline.metrics import ranking_metrics
    from pipeline.rank.data import build_window, daily_windows, recall_candidate_fn, user_sample
    from pipeline.rank.model import RankerConfig, RankerModel
    from pipeline.rank.stage import Sample, _holdout, _load, holdout_metrics, training_sample
    from pipeline.recommend import RecommendConfig, load_artefacts, recommend
    from pipeline.rerank import RerankConfig
    from pipeline.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("home")
    ap.add_argument("eval_out")
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--sample", type=int, default=None)
    a = ap.parse_args()

    run = Path(glob.glob(f"{a.home}/runs/*/ranker.json")[0]).parent
    snap = run / "snapshot"
    trained = json.loads((run / "ranker.json").read_text())
    as_of = pd.Timestamp(json.loads((run / "params.json").read_text())["as_of"]).to_pydatetime()
    s = load_settings()
    test = pd.read_csv(Path(a.eval_out) / "test.csv")
    users = user_sample(test["user_id"].to_numpy(), a.users, 7)
    truth = test[test["user_id"].isin(users)][["user_id", "item_id"]]
    events = _load(snap, Sample(users, 10**12, 0))[0]
    art = load_artefacts(snap, trained["artifact_uri"])
    cfg, rerank = RecommendConfig.from_settings(s), RerankConfig().with_overrides(s.rerank)

    def published(ranker: object, name: str) -> None:
        art.ranker = ranker
        lists, _ = recommend(users, events, art, as_of, cfg, rerank=rerank)
        ndcg = ranking_metrics(truth, lists.assign(score=-lists["rank"]), 10)["ndcg"]
        print(f"{name:40s} nDCG@10 {ndcg:.4f} ({len(users)} users)", flush=True)

    run_ranker = art.ranker
    published(run_ranker, "published path, the run's ranker")
    published(None, "published path, recall-only")
    if not a.retrain:
        return
    t0 = time.perf_counter()
    sample = training_sample(snap, a.sample or trained["sample"]["users"], trained["sample"]["seed"])
    hist, items, emb = _load(snap, sample)
    fn = recall_candidate_fn(items, **trained["recall"], snapshot_dir=snap)
    days, _ = daily_windows(as_of, s.rank_windows)
    first = hist["ts"].min()
    wins = [w for w in (build_window(hist, c, e, fn, stat_scale=sample.scale) for c, e in days
                        if pd.Timestamp(c) > first) if len(w.labels)]
    model = RankerModel(RankerConfig(seed=s.seed, event_weights=dict(s.event_weights),
                                     half_life_days=dict(s.half_life_days))).fit(wins, items, emb=emb, device="cpu")
    hold = _holdout(hist, items, as_of, trained["recall"], sample.scale, snap=snap)
    print(f"retrained on {len(sample.users)} users in {time.perf_counter() - t0:.0f} s; holdout nDCG@10 "
          f"{holdout_metrics(model, hold, items, emb=emb)['ndcg@10']:.4f}, recall-only "
          f"{holdout_metrics(None, hold, items)['ndcg@10']:.4f}", flush=True)
    published(model, "published path, retrained ranker")


if __name__ == "__main__":
    main()
