"""The production nightly run (``rerank evaluate --models nightly``) on the inner split of ml-100k's training part.

    python research/tune_nightly_ml100k.py [--arm 'NAME={"setting": value, ...}' ...] [--als] [--stubs]

The outer split is the harness's (``msr_stratified_split(interactions, 0.75, 42)``); the inner split is
``msr_stratified_split(outer_train, 0.75, 7)`` (research/tune_ml100k.py). Each arm runs ``run_nightly`` with
the default settings overridden by its JSON (settings names, as ``--params '{"nightly": {...}}'``) on the inner
training part and is scored on the inner validation part from the lists it published. The outer test part is
never read here. ``--als`` adds the evaluator's ALS on the same split as a reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("RERANK_SHARED_DATA", "../shared/data") + "/ml-100k")
    ap.add_argument("--arm", action="append", default=[], help='NAME={"setting": value}; default arm: defaults')
    ap.add_argument("--als", action="store_true", help="the evaluator's ALS on the same split, for reference")
    ap.add_argument("--stubs", action="store_true", help="item stubs, as the evaluator gave the run before it "
                    "handed over the dataset's titles and genres")
    args = ap.parse_args()

    from pipeline.evaluate.nightly_model import NightlyModel
    from pipeline.evaluate.protocols import msr_stratified_split
    from pipeline.evaluate.runner import interactions
    from pipeline.ingest import read_dataset
    from pipeline.metrics import ranking_metrics

    frames = read_dataset("movielens", args.data)
    inter = interactions(frames)
    outer_train, _ = msr_stratified_split(inter, 0.75, 42)
    train, valid = msr_stratified_split(outer_train, 0.75, 7)
    users = valid["user_id"].unique()
    arms = [("defaults", {})] + [(a.split("=", 1)[0], json.loads(a.split("=", 1)[1])) for a in args.arm]
    if args.als:
        from pipeline.evaluate.models import get_model

        t0 = time.time()
        m = get_model("als").fit(train)
        recs = m.recommend(users, k=10)
        print(f"als (evaluator)  ndcg@10 {ranking_metrics(valid, recs, 10)['ndcg']:.4f}  {time.time() - t0:.0f} s",
              flush=True)
    for name, settings in arms:
        t0 = time.time()
        model = NightlyModel(**settings)
        model.set_item_descriptors(None if args.stubs else frames.items)
        model.fit(train)
        recs = model.recommend(users, k=10)
        m = ranking_metrics(valid, recs, 10)
        gate = model.run_figures.get("evaluate_gate", {})
        print(f"{name:<28} ndcg@10 {m['ndcg']:.4f}  precision@10 {m['precision']:.4f}  "
              f"model {gate.get('scoring_model')}  holdout users {gate.get('holdout_users', gate.get('users'))}  "
              f"{time.time() - t0:.0f} s  {json.dumps(settings)}", flush=True)
        print(f"    gate: {json.dumps(gate, default=str)[:600]}", flush=True)


if __name__ == "__main__":
    main()
