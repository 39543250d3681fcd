"""Ranker throughput: training samples/s and scoring rows/s, each as a ratio to a bare torch pass of the
same network on pre-built tensors measured in the same run (so the ratio, not the absolute figure, is
what carries across machines).

    .venv/bin/python benchmarks/bench_rank.py [--users 2000 --items 500 --days 10 --device auto --threads 2]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch

from pipeline.datagen.build import build_shop
from pipeline.rank.data import build_window, daily_windows, recall_candidate_fn
from pipeline.rank.model import RankerConfig, RankerModel, _to_torch, resolve_device
from pipeline.rank.stage import item_feats_at

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    shop, _ = build_shop(a.users, a.items, a.days, seed=5, end=AS_OF)
    ev = shop.events.sort_values(["ts", "event_id"]).reset_index(drop=True)
    fn = recall_candidate_fn(shop.items, n_candidates=a.candidates)
    t0 = time.perf_counter()
    wins = [build_window(ev, c, e, fn) for c, e in daily_windows(AS_OF, a.windows)[0]]
    print(f"training data: {sum(len(w.labels) for w in wins)} positives in {a.windows} windows, "
          f"{time.perf_counter() - t0:.2f} s")
    cfg = RankerConfig(max_epochs=a.epochs, patience=a.epochs, val_share=0.0)
    model = RankerModel(cfg)
    t0 = time.perf_counter()
    model.fit(wins, shop.items, device=a.device)
    fit_s = time.perf_counter() - t0
    groups = model.metrics["train_groups"]
    rows = groups * (1 + cfg.n_recall_neg + cfg.n_random_neg) * model.metrics["epochs"]
    print(f"fit on {dev.type}: {groups} groups x {model.metrics['epochs']} epochs, {fit_s:.2f} s "
          f"(incl. encoding), {rows / fit_s:,.0f} candidate rows/s")

    # Bare training pass of the same network on pre-built random tensors of the same shapes.
    net = model.net.to(dev).train()
    B, C, L = cfg.batch_groups, 1 + cfg.n_recall_neg + cfg.n_random_neg, cfg.seq_len
    g = torch.Generator().manual_seed(0)

    def ri(hi: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, hi, shape, generator=g)

    nc = net.cfg
    seq = _to_torch({"items": ri(nc.n_items, B, L).numpy(), "types": ri(nc.n_types, B, L).numpy(),
                     "gaps": ri(nc.n_gaps, B, L).numpy()}, dev)
    cand = _to_torch({"item": ri(nc.n_items, B, C).numpy(), "cat": ri(nc.n_cats, B, C).numpy(),
                      "top": ri(nc.n_tops, B, C).numpy(), "brand": ri(nc.n_brands, B, C).numpy(),
                      "price": ri(nc.n_prices, B, C).numpy(), "source": ri(nc.n_sources, B, C).numpy(),
                      "num": torch.rand(B, C, nc.n_numeric, generator=g).numpy()}, dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    amp = dev.type == "cuda"
    steps = max(5, rows // (B * C) // max(model.metrics["epochs"], 1))
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(seq, cand).float(),
                                                     torch.zeros(B, dtype=torch.long, device=dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    bare_train = steps * B * C / (time.perf_counter() - t0)
    print(f"bare train step: {bare_train:,.0f} rows/s; fit / bare = {rows / fit_s / bare_train:.2f}")

    # Scoring: the holdout's candidates through RankerModel.score vs a bare forward on pre-built blocks.
    net.eval().to("cpu")
    hw = build_window(ev, daily_windows(AS_OF, 0)[1][0], AS_OF, fn)
    users = np.unique(ev["user_id"])
    cand_df = fn(users, hw.history, hw.cutoff)
    feats = item_feats_at(shop.items, hw.history, hw.cutoff, cfg)
    model.score(cand_df.head(1000), hw.history, feats, hw.cutoff)  # warm-up
    t0 = time.perf_counter()
    model.score(cand_df, hw.history, feats, hw.cutoff)
    score_s = time.perf_counter() - t0
    n_u, width = len(np.unique(cand_df["user_id"])), int(cand_df.groupby("user_id").size().max())
    ub = max(1, cfg.score_batch_rows // width)
    seq_b = {"items": ri(nc.n_items, ub, L), "types": ri(nc.n_types, ub, L), "gaps": ri(nc.n_gaps, ub, L)}
    cand_b = {"item": ri(nc.n_items, ub, width), "cat": ri(nc.n_cats, ub, width), "top": ri(nc.n_tops, ub, width),
              "brand": ri(nc.n_brands, ub, width), "price": ri(nc.n_prices, ub, width),
              "source": ri(nc.n_sources, ub, width), "num": torch.rand(ub, width, nc.n_numeric, generator=g)}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(-(-n_u // ub)):
            net(seq_b, cand_b)
    bare_s = time.perf_counter() - t0
    bare_rate = -(-n_u // ub) * ub * width / bare_s
    rate = len(cand_df) / score_s
    print(f"score: {len(cand_df):,} rows of {n_u} users in {score_s:.2f} s = {rate:,.0f} rows/s (incl. feature "
          f"building); bare forward {bare_rate:,.0f} rows/s; ratio {rate / bare_rate:.2f} (goal >= 0.7)")
    print(pd.Series({"threads": a.threads, "device": dev.type}).to_dict())


if __name__ == "__main__":
    main()
