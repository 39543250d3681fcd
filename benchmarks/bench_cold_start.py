"""Cold start: can content recall place items nobody has bought yet, with TF-IDF, multilingual text, the
picture, or both? (issue 24, acceptance 1)

    python benchmarks/bench_cold_start.py [--users 3000 --items 1500 --days 21 --test-days 3]
                                          [--seeds 1,2,3] [--weights 0.3,0.5,0.7,0.85,1.0]

Per seed: a generated shop (``build_shop``) with a drawn picture per item (``write_item_images``).
``as_of = END - test_days``. Cold items: created before ``as_of`` and never purchased before it (what a
nightly run at ``as_of`` sees as unsold). Users: those with a history before ``as_of``.

Content recall is the production one's query (:func:`pipeline.recall.content.content_candidates`: the
weighted mean of the user's ``history_items`` strongest items' vectors, decayed event weights) scored against
the cold items only; the top 50 are the list. Two truths:

* ``events``: the cold items the user clicked, carted or bought in ``[as_of, as_of + test_days)``;
* ``tastes``: the generator's ground truth: relevance of a cold item = the user's weight on its leaf
  (``category`` tastes) + half their weight on its brand; recall@50 counts the items of a favourite leaf.

Variants: ``tfidf`` (char n-grams + SVD 64), ``text`` (multilingual USE), ``image`` (EfficientNet-Lite0 on the
pictures), ``both`` (the fused vector at the text weight chosen on validation: the same protocol one
``test_days`` window earlier, ``as_of_val = as_of - test_days``, its truth before ``as_of``; nothing of the
test window is looked at). ``random`` is the floor. Figures are means over the seeds with the spread;
ratios are to ``tfidf`` in the same run. Figures only, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.datagen.build import DEFAULT_END, build_shop  # noqa: E402
from pipeline.datagen.images import write_item_images  # noqa: E402
from pipeline.features.encoders import encode_images, encode_texts, image_array  # noqa: E402
from pipeline.features.fusion import fuse  # noqa: E402
from pipeline.features.items import decayed_weight  # noqa: E402
from pipeline.features.text import MODEL_CHARS, embed_tfidf, item_texts  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

K_RECALL, K_NDCG, HISTORY = 50, 10, 20
INTENT = ("click", "add_to_cart", "purchase")


def _embeddings(items: pd.DataFrame) -> dict[str, np.ndarray]:
    from PIL import Image

    texts = item_texts(items).tolist()
    t0 = time.perf_counter()
    out = {"tfidf": embed_tfidf(texts, 64)}
    t1 = time.perf_counter()
    out["text"] = encode_texts([t[:MODEL_CHARS] for t in texts])
    t2 = time.perf_counter()
    arrays = []
    for p in items["image_path"]:
        with Image.open(p) as im:
            arrays.append(image_array(im))
    out["image"] = encode_images(arrays)
    t3 = time.perf_counter()
    print(f"  embedded {len(items)} items: tfidf {t1 - t0:.1f}s, text {t2 - t1:.1f}s, image {t3 - t2:.1f}s")
    return out


def _split(events: pd.DataFrame, items: pd.DataFrame, tastes: pd.DataFrame, cut: pd.Timestamp, end: pd.Timestamp,
           weights: dict, half_life: dict) -> dict:
    """History weights before ``cut``, cold items at ``cut``, both truths over ``[cut, end)``."""
    before = events[(events["ts"] < cut) & events["item_id"].notna()].copy()
    sold = set(before.loc[before["event_type"] == "purchase", "item_id"].astype(int))
    created = pd.to_datetime(items["created_at"], utc=True)
    cold = items.loc[(created < cut) & ~items["item_id"].isin(sold), "item_id"].to_numpy(np.int64)
    before["weight"] = decayed_weight(before, cut.to_pydatetime(), weights, half_life).to_numpy()
    hist = before.groupby(["user_id", "item_id"], as_index=False)["weight"].sum()
    hist["item_id"] = hist["item_id"].astype(np.int64)
    after = events[(events["ts"] >= cut) & (events["ts"] < end) & events["event_type"].isin(INTENT)]
    truth = after[after["item_id"].isin(cold)].groupby("user_id")["item_id"].apply(
        lambda s: set(s.astype(int)))
    users = np.intersect1d(truth.index.to_numpy(), hist["user_id"].unique())
    info = items.set_index("item_id").loc[cold, ["category", "brand"]]
    cat_t = tastes[tastes["dimension"] == "category"].pivot_table(index="user_id", columns="key", values="weight",
                                                                   aggfunc="sum", fill_value=0.0)
    brand_t = tastes[tastes["dimension"] == "brand"].pivot_table(index="user_id", columns="key", values="weight",
                                                                  aggfunc="sum", fill_value=0.0)
    cat_rel = cat_t.reindex(columns=info["category"].to_numpy(), fill_value=0.0)
    brand_rel = brand_t.reindex(columns=info["brand"].to_numpy(), fill_value=0.0)
    taste_users = np.intersect1d(cat_t.index.to_numpy(), hist["user_id"].unique())
    rng = np.random.default_rng(0)
    taste_users = np.sort(rng.choice(taste_users, min(2000, len(taste_users)), replace=False))
    return {"hist": hist, "cold": cold, "truth": truth, "users": users, "taste_users": taste_users,
            "cat_rel": cat_rel, "brand_rel": brand_rel}


def _lists(vec: np.ndarray, item_ids: np.ndarray, hist: pd.DataFrame, users: np.ndarray, cold: np.ndarray,
           k: int) -> np.ndarray:
    """Top-``k`` cold items per user (rows of ``users``) by cosine to the production content query."""
    order = np.argsort(item_ids)
    pos = order[np.searchsorted(item_ids[order], cold)]
    cv = vec[pos]
    cv = cv / np.maximum(np.linalg.norm(cv, axis=1, keepdims=True), 1e-12)
    h = hist[hist["user_id"].isin(users)].sort_values(["user_id", "weight", "item_id"], ascending=[True, False, True])
    h = h.groupby("user_id").head(HISTORY)
    top = h.groupby("user_id")["weight"].transform("max")
    uidx = np.searchsorted(users, h["user_id"].to_numpy())
    hv = vec[order[np.searchsorted(item_ids[order], h["item_id"].to_numpy())]]
    q = np.zeros((len(users), vec.shape[1]), np.float64)
    np.add.at(q, uidx, hv * (h["weight"] / top).to_numpy()[:, None])
    s = q @ cv.T
    k = min(k, len(cold))
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(part, np.argsort(-np.take_along_axis(s, part, axis=1), axis=1), axis=1)
    return cold[best]


def _metrics(lists: np.ndarray | list[np.ndarray], users: np.ndarray, split: dict, truth: str) -> tuple[float, float]:
    """Mean recall@50 and nDCG@10 over ``users``; a row is one user's list, best first (any length; an item
    that is not cold is never relevant: the nightly's published lists hold every kind of item)."""
    rec, ndcg = [], []
    disc = 1.0 / np.log2(np.arange(2, K_NDCG + 2))
    if truth == "events":
        for u, row in zip(users, lists, strict=True):
            rel_set = split["truth"].loc[u]
            hits = np.array([i in rel_set for i in row])
            rec.append(hits[:K_RECALL].sum() / len(rel_set))
            ideal = disc[:min(len(rel_set), K_NDCG)].sum()
            ndcg.append((hits[:K_NDCG] * disc[:len(hits[:K_NDCG])]).sum() / ideal)
    else:
        cat_rel, brand_rel = split["cat_rel"], split["brand_rel"]
        col = {int(i): j for j, i in enumerate(split["cold"])}
        for u, row in zip(users, lists, strict=True):
            c = cat_rel.loc[u].to_numpy() if u in cat_rel.index else np.zeros(len(col))
            b = brand_rel.loc[u].to_numpy() if u in brand_rel.index else np.zeros(len(col))
            gain = c + 0.5 * b
            n_rel = int((c > 0).sum())
            if n_rel == 0:
                continue
            ideal = (np.sort(gain)[::-1][:K_NDCG] * disc).sum()
            # index -1 (an item that is not cold) reads the appended zero
            idx = np.array([col.get(int(i), -1) for i in row], dtype=np.int64)
            c, gain = np.append(c, 0.0), np.append(gain, 0.0)
            rec.append((c[idx[:K_RECALL]] > 0).sum() / min(n_rel, K_RECALL))
            ndcg.append((gain[idx[:K_NDCG]] * disc[:len(idx[:K_NDCG])]).sum() / ideal if ideal > 0 else 0.0)
    return float(np.mean(rec)), float(np.mean(ndcg))


def run_seed(seed: int, args: argparse.Namespace, folder: Path) -> list[dict]:
    s = Settings()
    frames, tastes = build_shop(args.users, args.items, args.days, seed)
    items = write_item_images(frames.items, folder / f"img-{seed}", seed=seed).sort_values("item_id")
    events = frames.events
    emb = _embeddings(items)
    ids = items["item_id"].to_numpy(np.int64)
    test_cut = pd.Timestamp(DEFAULT_END - timedelta(days=args.test_days))
    val_cut = test_cut - pd.Timedelta(days=args.test_days)
    val = _split(events, items, tastes, val_cut, test_cut, s.event_weights, s.half_life_days)
    test = _split(events, items, tastes, test_cut, pd.Timestamp(DEFAULT_END), s.event_weights, s.half_life_days)

    def both(w: float) -> np.ndarray:
        return fuse(ids, emb["text"], ids, emb["image"], w)[0]

    # the fusion weight: best nDCG@10 (event truth) on the validation window
    scores = {w: _metrics(_lists(both(w), ids, val["hist"], val["users"], val["cold"], K_RECALL), val["users"], val,
                          "events")[1] for w in args.weights}
    w_best = max(scores, key=lambda w: (scores[w], w))
    print(f"  seed {seed}: validation nDCG@10 by text weight "
          + ", ".join(f"{w}: {v:.4f}" for w, v in scores.items()) + f" -> {w_best}")
    variants = {"tfidf": emb["tfidf"], "text": emb["text"], "image": emb["image"], f"both(w={w_best})": both(w_best)}
    rows = []
    rng = np.random.default_rng(seed)
    for truth, users in (("events", test["users"]), ("tastes", test["taste_users"])):
        for name, vec in variants.items():
            r, n = _metrics(_lists(vec, ids, test["hist"], users, test["cold"], K_RECALL), users, test, truth)
            rows.append({"seed": seed, "truth": truth, "variant": name.split("(")[0], "recall@50": r, "ndcg@10": n,
                         "w": w_best if name.startswith("both") else None})
        rand = np.stack([rng.choice(test["cold"], min(K_RECALL, len(test["cold"])), replace=False) for _ in users])
        r, n = _metrics(rand, users, test, truth)
        rows.append({"seed": seed, "truth": truth, "variant": "random", "recall@50": r, "ndcg@10": n, "w": None})
    print(f"  seed {seed}: {len(test['cold'])} cold items of {len(items)}, {len(test['users'])} users with a cold "
          f"item in the test window, {len(test['taste_users'])} users for the taste truth")
    return rows


#: ``--nightly`` variants: RERANK_* settings of one production run each. ``image`` is ``both`` with the text
#: share of the fused vector at 0 (content recall, similar_items, the ranker's and MMR's content inputs read
#: the picture alone); ``both`` keeps the default RERANK_CONTENT_TEXT_WEIGHT.
NIGHTLY_VARIANTS: dict[str, dict] = {
    "tfidf": {"embedding_method": "tfidf", "image_model": "none"},
    "text": {"embedding_method": "multilingual", "image_model": "none"},
    "image": {"embedding_method": "multilingual", "image_model": "efficientnet-lite0", "content_text_weight": 0.0},
    "both": {"embedding_method": "multilingual", "image_model": "efficientnet-lite0"},
}
NIGHTLY_SHOP = "cold_start_shop"


def _rows_of(lists: pd.DataFrame, users: np.ndarray, keep: np.ndarray | None = None) -> list[np.ndarray]:
    """Each user's published items, best first (empty for a user without a list); only ``keep`` items when
    given (the list's cold part with its ranks closed up)."""
    if keep is not None:
        lists = lists[lists["item_id"].isin(keep)]
    by_user = {int(u): g.to_numpy(np.int64) for u, g in lists.groupby("user_id", sort=False)["item_id"]}
    return [by_user.get(int(u), np.empty(0, np.int64)) for u in users]


def run_seed_nightly(seed: int, args: argparse.Namespace, folder: Path, server: str) -> list[dict]:
    """One generated shop (with pictures) in a scratch database; per variant the production nightly
    (:func:`pipeline.nightly.run_nightly`, every stage) on its own copy with its own fresh RERANK_HOME, at
    ``as_of = END - test_days``; its published lists (the run's own table) scored on the cold items."""
    from benchmarks.eval_nightly import fresh_database, published_lists
    from pipeline.datagen import generate_shop
    from pipeline.db import migrate
    from pipeline.nightly import run_nightly
    from pipeline.settings import load_settings

    s = Settings()
    t = time.perf_counter()
    shop_url = fresh_database(server, NIGHTLY_SHOP)
    migrate.upgrade(shop_url)
    g = generate_shop(shop_url, users=args.users, items=args.items, days=args.days, seed=seed, end=DEFAULT_END,
                      images_dir=str(folder / f"img-{seed}"))
    frames, tastes = build_shop(args.users, args.items, args.days, seed)  # the same shop, for the truths
    if (g.users, g.items, g.events) != (len(frames.users), len(frames.items), len(frames.events)):
        raise SystemExit(f"loaded shop {g} differs from the generator's frames")
    items = frames.items.sort_values("item_id")
    test_cut = pd.Timestamp(DEFAULT_END - timedelta(days=args.test_days))
    test = _split(frames.events, items, tastes, test_cut, pd.Timestamp(DEFAULT_END), s.event_weights,
                  s.half_life_days)
    print(f"  seed {seed}: shop {g.users} users, {g.items} items, {g.events} events ({time.perf_counter() - t:.0f} s); "
          f"{len(test['cold'])} cold items, {len(test['users'])} users with a cold item in the test window, "
          f"{len(test['taste_users'])} users for the taste truth", flush=True)
    rows = []
    for name in args.variants:
        db = f"cold_start_{name}"
        url = fresh_database(server, db, template=NIGHTLY_SHOP)
        home = folder / f"home-{seed}-{name}"
        home.mkdir(parents=True)
        st = load_settings(database_url=url, home=str(home), dask_workers=args.dask_workers, top_n=args.top_n,
                           seed=seed, snapshot_url=None, **NIGHTLY_VARIANTS[name],
                           **({"worker_memory": args.worker_memory} if args.worker_memory else {}))
        t = time.perf_counter()
        res = run_nightly(st, as_of=test_cut.to_pydatetime(), retrain=True)
        secs = time.perf_counter() - t
        lists = published_lists(url)
        f, gate = res.get("item_features", {}), res.get("evaluate_gate", {})
        print(f"  seed {seed} {name}: nightly {secs:.0f} s; item_features: embedding {f.get('embedding_method')} "
              f"(fallback {f.get('embedding_fallback')}), image model {f.get('image_model')}, "
              f"{f.get('items_with_image_vector')} image vectors, text weight {f.get('content_text_weight')}; "
              f"scoring model {gate.get('scoring_model')}; {lists['user_id'].nunique()} users published", flush=True)
        cold_slots = lists[lists["item_id"].isin(test["cold"])]
        per_list = cold_slots.groupby("user_id").size().reindex(lists["user_id"].unique(), fill_value=0)
        top10 = cold_slots[cold_slots["rank"] <= K_NDCG].groupby("user_id").size()
        src = cold_slots["source"].value_counts(normalize=True).round(3).to_dict() if "source" in lists else {}
        print(f"    cold items per list: {per_list.mean():.1f} of {args.top_n} (top 10: "
              f"{top10.sum() / max(len(per_list), 1):.2f}); sources of cold slots {src}")
        for truth, users in (("events", test["users"]), ("tastes", test["taste_users"])):
            for how, keep in (("published", None), ("cold part", test["cold"])):
                r, n = _metrics(_rows_of(lists, users, keep), users, test, truth)
                rows.append({"seed": seed, "truth": truth, "variant": name, "lists": how, "recall@50": r,
                             "ndcg@10": n, "seconds": secs, "cold_per_list": float(per_list.mean())})
        _drop_database(server, db)  # the copy is scored: free its disk for the next variant
    return rows


def _drop_database(server: str, name: str) -> None:
    from psycopg2 import sql

    from benchmarks.eval_nightly import db_url
    from pipeline.db.engine import connect

    with connect(db_url(server, "postgres"), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def report_nightly(df: pd.DataFrame, args: argparse.Namespace) -> None:
    """Means over seeds (± std) per truth and list reading, ratios to tfidf of the same run."""
    order = [v for v in NIGHTLY_VARIANTS if v in args.variants]
    secs = df.drop_duplicates(["seed", "variant"]).groupby("variant")["seconds"].mean().reindex(order)
    print("\nnightly seconds per variant (mean over seeds): " + ", ".join(f"{v} {x:.0f}" for v, x in secs.items()))
    for truth in ("events", "tastes"):
        for how in ("published", "cold part"):
            sub = df[(df["truth"] == truth) & (df["lists"] == how)]
            agg = sub.groupby("variant")[["recall@50", "ndcg@10"]].agg(["mean", "std"]).reindex(order)
            base = agg.loc["tfidf"] if "tfidf" in agg.index else None
            print(f"\nnightly, truth = {truth}, lists: {how} (mean over seeds {args.seeds}, +- std; ratio to tfidf)")
            for v in order:
                a = agg.loc[v]
                rr = f" (x{a[('recall@50', 'mean')] / base[('recall@50', 'mean')]:.2f})" if base is not None else ""
                rn = f" (x{a[('ndcg@10', 'mean')] / base[('ndcg@10', 'mean')]:.2f})" if base is not None else ""
                print(f"  {v:6s} recall@{args.top_n} {a[('recall@50', 'mean')]:.4f} +- {a[('recall@50', 'std')]:.4f}"
                      f"{rr}   nDCG@10 {a[('ndcg@10', 'mean')]:.4f} +- {a[('ndcg@10', 'std')]:.4f}{rn}")
            per = sub.pivot_table(index="seed", columns="variant", values="ndcg@10").reindex(columns=order)
            print("  per seed nDCG@10:\n" + per.round(4).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--test-days", type=int, default=3)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--weights", default="0.3,0.5,0.7,0.85,1.0")
    ap.add_argument("--nightly", action="store_true",
                    help="instead: the production nightly per variant on the shop, its published lists scored")
    ap.add_argument("--variants", default=",".join(NIGHTLY_VARIANTS), help="--nightly: which (tfidf,text,image,both)")
    ap.add_argument("--top-n", type=int, default=K_RECALL, help="--nightly: list length (recall@top_n)")
    ap.add_argument("--dask-workers", type=int, default=1, help="--nightly: LocalCluster workers of each run")
    ap.add_argument("--out", help="--nightly: write the per-seed rows to this CSV after every seed")
    ap.add_argument("--worker-memory", help="--nightly: RERANK_WORKER_MEMORY of each run (default: the setting's)")
    ap.add_argument("--home", help="--nightly: RERANK_HOME of the embedded server for the scratch databases "
                                   "(default: the RERANK_HOME setting; RERANK_DATABASE_URL wins)")
    args = ap.parse_args()
    args.weights = [float(w) for w in args.weights.split(",")]
    if args.nightly:
        from pipeline.db.engine import database_url
        from pipeline.settings import load_settings

        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = set(args.variants) - set(NIGHTLY_VARIANTS)
        if bad:
            ap.error(f"--variants: unknown {sorted(bad)}, one of {list(NIGHTLY_VARIANTS)}")
        server = database_url(load_settings(**({"home": args.home} if args.home else {})))
        rows = []
        with tempfile.TemporaryDirectory(prefix="cold-start-nightly-") as tmp:
            for seed in (int(x) for x in args.seeds.split(",")):
                rows += run_seed_nightly(seed, args, Path(tmp), server)
                report_nightly(pd.DataFrame(rows), args)  # after every seed: partial figures survive a stop
                if args.out:
                    pd.DataFrame(rows).to_csv(args.out, index=False)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(x) for x in args.seeds.split(",")):
            rows += run_seed(seed, args, Path(tmp))
    df = pd.DataFrame(rows)
    order = ["random", "tfidf", "text", "image", "both"]
    for truth in ("events", "tastes"):
        sub = df[df["truth"] == truth]
        agg = sub.groupby("variant")[["recall@50", "ndcg@10"]].agg(["mean", "std"]).reindex(order)
        base = agg.loc["tfidf"]
        print(f"\ntruth = {truth} (mean over seeds {args.seeds}, +- std; ratio to tfidf)")
        for v in order:
            a = agg.loc[v]
            print(f"  {v:7s} recall@50 {a[('recall@50', 'mean')]:.4f} +- {a[('recall@50', 'std')]:.4f} "
                  f"(x{a[('recall@50', 'mean')] / base[('recall@50', 'mean')]:.2f})   "
                  f"nDCG@10 {a[('ndcg@10', 'mean')]:.4f} +- {a[('ndcg@10', 'std')]:.4f} "
                  f"(x{a[('ndcg@10', 'mean')] / base[('ndcg@10', 'mean')]:.2f})")
        per = sub.pivot_table(index="seed", columns="variant", values="ndcg@10").reindex(columns=order)
        print("  per seed nDCG@10:\n" + per.round(4).to_string())
    print("\nfusion text weight chosen on validation per seed:",
          df.dropna(subset=["w"]).drop_duplicates("seed").set_index("seed")["w"].to_dict())


if __name__ == "__main__":
    main()
