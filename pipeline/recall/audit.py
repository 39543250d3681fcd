"""Recall audit (acceptance 2): recall@N of each recall source and of the merge under a temporal split, and
the share of test items that only content recall reaches (cold items).

Train = events before ``cutoff``; test = the (user, item) pairs with an item event in ``[cutoff, cutoff +
window)`` that the user had not touched before. Every source runs alone through the same
:func:`~pipeline.recall.candidates.generate_candidates` the nightly run uses (same filters, same quotas),
then all together (the merge, ``n`` per user). Run ``python -m pipeline.recall.audit --help``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.frames import ShopFrames
from pipeline.recall.candidates import SOURCES, RecallConfig, generate_candidates
from pipeline.recall.content import ContentIndex
from pipeline.recall.factors import Factors, train_als
from pipeline.recall.matrix import build_interactions
from pipeline.recall.neighbours import neighbours_from_interactions
from pipeline.recall.sequential import FollowerBuilder
from pipeline.recall.text import TextIndex, item_texts, text_embeddings

DEFAULT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
DEFAULT_HALF_LIFE = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}


def item_stats(events: pd.DataFrame, items: pd.DataFrame, as_of: datetime, weights: dict[str, float],
               half_life_days: dict[str, float]) -> pd.DataFrame:
    """The features stage's columns that recall reads (activity, events, recent_events, trend, top_category)."""
    from pipeline.features.items import decayed_weight, top_category

    e = events[events["item_id"].notna()].copy()
    e["item_id"] = e["item_id"].astype("int64")
    e["w"] = decayed_weight(e, as_of, weights, half_life_days)
    e["recent"] = (pd.Timestamp(as_of) - e["ts"]) <= pd.Timedelta(days=3)
    g = e.groupby("item_id").agg(activity=("w", "sum"), events=("w", "size"), recent_events=("recent", "sum"))
    cols = [c for c in ("item_id", "title", "brand", "category", "in_stock", "visible") if c in items.columns]
    f = items[cols].merge(g, left_on="item_id", right_index=True, how="left").fillna(
        {"activity": 0.0, "events": 0, "recent_events": 0})
    for c, default in (("in_stock", True), ("visible", True), ("category", "")):
        if c not in f.columns:
            f[c] = default
    f["trend"] = (f["recent_events"] + 1.0) / (f["events"] + 10.0)
    f["top_category"] = top_category(f["category"])
    return f.sort_values("item_id").reset_index(drop=True)


def source_recall(frames: ShopFrames, *, cutoff: str | pd.Timestamp | None = None, window: str = "1D",
                  n: int = 300, weights: dict[str, float] | None = None,
                  half_life_days: dict[str, float] | None = None, embeddings: pd.DataFrame | None = None,
                  factors: int = 64, seed: int = 42, max_users: int | None = None, batch: int = 500,
                  client: object | None = None, catalogue: str = "as-of") -> dict:
    """recall@``n`` per source and for the merge, plus the cold-item figures; a JSON-ready dict.

    ``catalogue="as-of"`` keeps the items created before the cutoff (test items that did not exist yet are
    dropped: no recall could return them); ``"all"`` keeps every item, for imports whose ``created_at`` is
    only the item's first event (Taobao): there an item first bought in the test window was on sale before,
    and it is exactly the cold item that only content recall can reach.
    """
    if catalogue not in ("as-of", "all"):
        raise ConfigError(f"unknown catalogue mode {catalogue!r}", "one of: as-of, all")
    weights = weights or DEFAULT_WEIGHTS
    half_life_days = half_life_days or DEFAULT_HALF_LIFE
    ev = frames.events.copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    ev = ev[ev["event_type"].isin([*weights, "search"])]
    window_td = pd.Timedelta(window)
    cut = pd.Timestamp(cutoff) if cutoff is not None else ev["ts"].max() - window_td
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
    as_of = cut.to_pydatetime()
    train = ev[ev["ts"] < cut]
    nxt = ev[(ev["ts"] >= cut) & (ev["ts"] < cut + window_td) & ev["item_id"].notna()]
    test = nxt[["user_id", "item_id"]].astype("int64").drop_duplicates()
    seen = train.loc[train["item_id"].notna(), ["user_id", "item_id"]].astype("int64").drop_duplicates()
    test = test.merge(seen.assign(_s=1), how="left", on=["user_id", "item_id"])
    test = test[test["_s"].isna()].drop(columns="_s")
    items = frames.items
    if catalogue == "as-of" and "created_at" in items.columns:  # the catalogue as it was at the cutoff
        items = items[pd.to_datetime(items["created_at"], utc=True) < cut]
    test = test[test["item_id"].isin(items["item_id"])]
    users = np.sort(test["user_id"].unique())
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        test = test[test["user_id"].isin(users)]

    t0 = time.perf_counter()
    feats = item_stats(train, items, as_of, weights, half_life_days)
    inter = build_interactions(train, as_of, weights=weights, half_life_days=half_life_days,
                               item_ids=feats["item_id"].to_numpy())
    nb = neighbours_from_interactions(inter, k=50, client=client)
    uf, itf, meta = train_als(inter.user_items, factors=factors, seed=seed, iterations=15)
    fac = Factors(uf, itf, inter.user_ids, inter.item_ids, meta)
    fb = FollowerBuilder(inter.item_ids)
    fb.add(train)
    followers = fb.table()
    has_text = "title" in items.columns and items["title"].notna().any()
    emb = embeddings if embeddings is not None else (text_embeddings(items) if has_text else None)
    content = ContentIndex.from_frame(emb) if emb is not None else None
    text_index = TextIndex(feats["item_id"].to_numpy(), item_texts(feats).tolist()) if has_text else None
    build_s = time.perf_counter() - t0

    cfg = RecallConfig(as_of=as_of, n_candidates=n, weights=weights, half_life_days=half_life_days)
    runs = {s: (s,) for s in SOURCES} | {"merge": None}
    hits: dict[str, pd.DataFrame] = {}
    timing = {}
    tev = train[train["user_id"].isin(users)]
    for name, only in runs.items():
        t1 = time.perf_counter()
        parts = []
        for s in range(0, len(users), batch):
            ub = users[s: s + batch]
            c = generate_candidates(ub, tev[tev["user_id"].isin(ub)], nb, feats, cfg, factors=fac,
                                    content_index=content, text_index=text_index, sources=only,
                                    followers=followers)
            parts.append(c[["user_id", "item_id"]])
        cand = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["user_id", "item_id"])
        hits[name] = test.merge(cand.astype("int64"), on=["user_id", "item_id"], how="inner")
        timing[name] = round(time.perf_counter() - t1, 2)
    key = pd.MultiIndex.from_frame(test[["user_id", "item_id"]])
    hit_mask = {k: key.isin(pd.MultiIndex.from_frame(h[["user_id", "item_id"]])) for k, h in hits.items()}
    others = np.zeros(len(test), bool)
    for s in SOURCES:
        if s != "content":
            others |= hit_mask[s]
    train_items = set(inter.item_ids[np.asarray((inter.user_items != 0).sum(axis=0)).ravel() > 0].tolist())
    cold = ~test["item_id"].isin(train_items).to_numpy()
    out = {
        "cutoff": cut.isoformat(), "window": window, "n": n, "catalogue_mode": catalogue,
        "train_events": len(train), "test_pairs": len(test),
        "test_users": len(users), "catalogue": len(items), "build_seconds": round(build_s, 2),
        "recall": {k: round(float(m.mean()), 4) if len(m) else 0.0 for k, m in hit_mask.items()},
        "hits": {k: int(m.sum()) for k, m in hit_mask.items()},
        "cold_test_share": round(float(cold.mean()), 4) if len(cold) else 0.0,
        "cold_test_pairs": int(cold.sum()),
        "cold_recall": {k: round(float(m[cold].mean()), 4) if cold.any() else 0.0 for k, m in hit_mask.items()},
        "content_only_share": round(float((hit_mask["content"] & ~others).mean()), 4) if len(test) else 0.0,
        "cold_reached_by_content_share": round(float((cold & hit_mask["content"]).mean()), 4) if len(test) else 0.0,
        "candidate_seconds": timing,
    }
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.recall.audit --generated 3000,1500,28 --out-dir D`` or ``--format taobao --path P``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generated", help="users,items,days of a generated shop (datagen.build_shop)")
    p.add_argument("--format", help="an importer format (pipeline.ingest.read_dataset), e.g. taobao")
    p.add_argument("--path")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--window", default="1D")
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--catalogue", choices=("as-of", "all"), default="as-of",
                   help="items at the cutoff (as-of) or every item (all: imports whose created_at is a first event)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--out-dir", help="write audit.json and recall.csv (one row per source) into this folder")
    a = p.parse_args(argv)
    if a.generated:
        from pipeline.datagen import build_shop

        u, i, d = (int(x) for x in a.generated.split(","))
        frames, _ = build_shop(u, i, d, seed=a.seed)
        name = f"generated {u}x{i}x{d} seed {a.seed}"
    else:
        from pipeline.ingest import read_dataset

        frames = read_dataset(a.format, a.path)
        name = f"{a.format} {a.path}"
    res = {"dataset": name, **source_recall(frames, n=a.n, window=a.window, max_users=a.max_users,
                                            catalogue=a.catalogue)}
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    if a.out_dir:
        write_outputs(res, a.out_dir)


def write_outputs(res: dict, out_dir: str | Path) -> Path:
    """``audit.json`` (everything) and ``recall.csv`` (source, recall, hits, cold_recall, seconds) in ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "audit.json").write_text(json.dumps(res, indent=2))
    rows = [{"source": k, "recall": v, "hits": res["hits"][k], "test_pairs": res["test_pairs"],
             "cold_recall": res["cold_recall"][k], "seconds": res["candidate_seconds"][k]}
            for k, v in res["recall"].items()]
    pd.DataFrame(rows).to_csv(d / "recall.csv", index=False)
    return d


if __name__ == "__main__":
    main()
