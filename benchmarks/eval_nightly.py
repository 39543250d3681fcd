"""Quality of the lists the real nightly run publishes, under a temporal split (issue #6 follow-up).

    python benchmarks/eval_nightly.py [--users 2000 --items 400 --days 21 --test-days 3 --top-n 20 --seed 3]
                                      [--window-days 3] [--candidates 300] [--no-plain-arm]
                                      [--retarget-cap 1.0] [--arm 'LABEL={"mmr_lambda": 1.0}' ...]
                                      [--url postgresql://...] [--home DIR]

The eval harness's ``pipeline`` model (pipeline/evaluate/ranker.py) trains its own model; this script instead
runs :func:`pipeline.nightly.run_nightly` itself (every stage, no Airflow) and scores what it published.

1. One shop: a generated shop (``generate_shop``) whose last day ``END`` is ``--test-days`` days after the
   evaluation cut-off ``as_of = END - test_days`` (midnight UTC), so shop.events holds events after ``as_of``.
   It is written to a fresh database ``eval_nightly_shop`` on the server (``--url``, else ``database_url()``:
   RERANK_DATABASE_URL or the embedded server under ``--home`` / RERANK_HOME), and each arm below runs on its
   own copy (``CREATE DATABASE ... TEMPLATE``) with its own fresh RERANK_HOME, so no arm sees another's models,
   runs or snapshots. The nightly reads only events before ``as_of``.
2. Arms, all on the same shop and the same truth:
   (a) ``ranker``: ``run_nightly(retrain=True)`` (the default). The database has no champion, so the gate
       promotes the first candidate and the run scores with it (P_recall * P_rank, then the re-rank).
   (b) ``recall-only``: ``run_nightly(retrain=False)`` on a database with no champion: train_ranker trains
       nothing, evaluate_gate records ``recall-only`` and score_users sets ``p_rank = 1`` (same recall, same
       re-rank); this is the path a shop runs on before its first model.
   (c) ``popularity``: the items with the most events (any item event type) in the 7 days before ``as_of``,
       among items on sale at ``as_of`` (created before it, in stock, visible), minus the user's seen items.
   (d) ``ranker, re-rank off`` (diagnostic; ``--no-plain-arm`` skips it): (a) with RERANK_RERANK turning off
       MMR, the category / brand / retarget caps and exploration, to see what the re-rank costs or gains.
   (e) ``ranker, retarget uncapped``: (a) with ``max_retarget_share`` = ``--retarget-cap`` (default 1, no
       cap; the re-rank's default 0.2 skips the arm): the ranker leans on items the user recently viewed
       (re-engagement is its likeliest label), which scores under the all-intent truth below and never under
       the new-items truth; this arm shows what the default cap trades.
   (f) each ``--arm LABEL=JSON``: (a) with those re-rank overrides (RERANK_RERANK; the defaults otherwise,
       the retarget cap included), to measure one re-rank setting at a time.
   Lists of (a), (b), (d), (e) and (f) are read back from the live run's own table (what it published; the
   view ``recsys.user_recommendations`` would hide the truth window's purchases, see :func:`published_lists`).
3. Truth (the definition of pipeline/recall/audit.py's test pairs, restricted to intent events): per user,
   the distinct items they clicked, added to cart or purchased in ``[as_of, as_of + window)`` that they had
   no event with before ``as_of``; items created after ``as_of`` are dropped (no list could hold them).
   Users: those created before ``as_of`` with at least one test item; a user without a list counts as zero.
4. Metrics with pipeline/evaluate/metrics.py: nDCG@10, HR@10, recall@10, MRR@10 and recall@top_n. Printed as
   a table with ratios (ranker / recall-only, each / popularity); the ranker's own gate figures (holdout day
   before ``as_of``) are printed too. Diagnostics: the share of top-10 slots holding items the user touched
   before ``as_of`` (retargeting: never a hit under this truth), the lists with those items dropped, and the
   metrics against a truth that keeps re-engagements. Figures only, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.db.engine import connect  # noqa: E402
from pipeline.metrics import per_user_ranking  # noqa: E402

INTENT = ("click", "add_to_cart", "purchase")
ITEM_EVENTS = ("view", *INTENT)
SHOP_DB = "eval_nightly_shop"
K = 10


def db_url(server_url: str, name: str) -> str:
    """The same server's URL with another database name."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def fresh_database(server_url: str, name: str, template: str | None = None) -> str:
    """Drop and create ``name`` (from ``template`` when given); return its URL."""
    from psycopg2 import sql

    with connect(db_url(server_url, "postgres"), autocommit=True) as conn, conn.cursor() as cur:
        # CREATE DATABASE ... TEMPLATE needs the template free of sessions (pooled ones from migrate/datagen).
        for db in (name, template):
            if db:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        if template:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                          sql.Identifier(template)))
        else:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return db_url(server_url, name)


def read_shop(url: str, until: datetime) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Item events before ``until``, the catalogue and the users (straight from shop.*, not the snapshot)."""
    from pipeline.db.engine import sa_engine

    eng = sa_engine(url)
    ev = pd.read_sql("SELECT user_id, item_id, event_type, ts FROM shop.events "
                     "WHERE item_id IS NOT NULL AND event_type = ANY(%(types)s) AND ts < %(until)s",
                     eng, params={"types": list(ITEM_EVENTS), "until": until})
    items = pd.read_sql("SELECT item_id, in_stock, visible, created_at FROM shop.items", eng)
    users = pd.read_sql("SELECT user_id, created_at FROM shop.users", eng)
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    ev[["user_id", "item_id"]] = ev[["user_id", "item_id"]].astype("int64")
    items["created_at"] = pd.to_datetime(items["created_at"], utc=True)
    users["created_at"] = pd.to_datetime(users["created_at"], utc=True)
    return ev, items, users


def seen_pairs(ev: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """(user_id, item_id) pairs with any item event before ``as_of``."""
    return ev.loc[ev["ts"] < pd.Timestamp(as_of), ["user_id", "item_id"]].drop_duplicates()


def drop_seen(df: pd.DataFrame, seen: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``df`` whose (user_id, item_id) is not in ``seen``."""
    m = df.merge(seen.assign(_s=1), how="left", on=["user_id", "item_id"])
    return df[m["_s"].isna().to_numpy()]


def truth_pairs(ev: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, as_of: datetime,
                window: timedelta, *, new_only: bool = True) -> pd.DataFrame:
    """(user_id, item_id): intent events in [as_of, as_of + window), by default only on items the user had
    not touched before (``new_only=False`` keeps re-engagements, which retargeting aims at)."""
    cut = pd.Timestamp(as_of)
    nxt = ev[(ev["ts"] >= cut) & (ev["ts"] < cut + window) & ev["event_type"].isin(INTENT)]
    test = nxt[["user_id", "item_id"]].drop_duplicates()
    if new_only:
        test = drop_seen(test, seen_pairs(ev, as_of))
    test = test[test["item_id"].isin(items.loc[items["created_at"] < cut, "item_id"])]
    test = test[test["user_id"].isin(users.loc[users["created_at"] < cut, "user_id"])]
    return test.reset_index(drop=True)


def popularity_lists(ev: pd.DataFrame, items: pd.DataFrame, user_ids: np.ndarray, as_of: datetime,
                     top_n: int, days: int = 7) -> pd.DataFrame:
    """Most-evented items of the ``days`` before ``as_of`` (on sale), minus each user's seen items."""
    cut = pd.Timestamp(as_of)
    recent = ev[(ev["ts"] >= cut - pd.Timedelta(days=days)) & (ev["ts"] < cut)]
    on_sale = items.loc[(items["created_at"] < cut) & items["in_stock"] & items["visible"], "item_id"]
    counts = recent[recent["item_id"].isin(on_sale)].groupby("item_id").size()
    ranked = counts.sort_values(ascending=False, kind="stable").index.to_numpy()
    seen = seen_pairs(ev, as_of)
    seen = seen[seen["user_id"].isin(user_ids)].groupby("user_id")["item_id"].agg(set)
    rows = []
    for u in user_ids:
        s = seen.get(u, set())
        top = [i for i in ranked[: top_n + len(s)] if i not in s][:top_n]
        rows.append(pd.DataFrame({"user_id": u, "item_id": top, "rank": np.arange(1, len(top) + 1)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["user_id", "item_id", "rank"])


def published_lists(url: str) -> pd.DataFrame:
    """The live run's lists as published at ``as_of``: its own table, not recsys.user_recommendations.

    The view hides an item the user bought after the list was generated (right for a reader), but this
    shop already holds the truth window's events, so the view would hide exactly the purchases the lists
    predicted: on seed 3 that cut the ranker's nDCG@10 on new items from 0.089 to 0.069, while the
    popularity lists, built here, kept theirs. Stock and visibility do not change in a generated shop."""
    from pipeline.publish.swap import live_lists

    lists = live_lists(url, columns=("user_id", "rank", "item_id", "source"))
    if lists is None:
        raise SystemExit(f"nothing was published on {url}: see the run's gate figures above")
    return lists.sort_values(["user_id", "rank"], ignore_index=True)


def score(truth: pd.DataFrame, recs: pd.DataFrame, top_n: int) -> dict[str, float]:
    """Metrics at K averaged over every truth user (a user without a list counts as zero), recall@top_n."""
    n_users = truth["user_id"].nunique()
    out: dict[str, float] = {}
    if n_users == 0:
        return {"ndcg@10": 0.0, "hr@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0, f"recall@{top_n}": 0.0,
                "users_with_list": 0.0}
    per = per_user_ranking(truth, recs, K)
    for m in ("ndcg", "hr", "recall", "mrr"):
        out[f"{m}@{K}"] = float(per[m].sum()) / n_users if len(per) else 0.0
    per_n = per_user_ranking(truth, recs, top_n)
    out[f"recall@{top_n}"] = float(per_n["recall"].sum()) / n_users if len(per_n) else 0.0
    out["users_with_list"] = float(len(per)) / n_users
    return out


def run_arm(server_url: str, label: str, *, retrain: bool, as_of: datetime, top_n: int, candidates: int,
            seed: int, home_root: Path, rerank: dict | None = None) -> tuple[pd.DataFrame, dict, float]:
    """One nightly run on a fresh copy of the shop; its published lists, stage results and wall seconds."""
    from pipeline.nightly import run_nightly
    from pipeline.settings import load_settings

    name = "eval_nightly_" + "".join(c if c.isalnum() else "_" for c in label)
    url = fresh_database(server_url, name, template=SHOP_DB)
    home = home_root / name
    home.mkdir(parents=True)
    s = load_settings(database_url=url, home=str(home), dask_workers=1, top_n=top_n, candidates=candidates,
                      seed=seed, snapshot_url=None, rerank=rerank or {})
    t = time.perf_counter()
    res = run_nightly(s, as_of=as_of, retrain=retrain)
    secs = time.perf_counter() - t
    return published_lists(url), res, secs


def tastes_ndcg(url: str, arms: dict[str, pd.DataFrame], items: pd.DataFrame, users: np.ndarray,
                as_of: datetime, k: int = K) -> dict[str, float]:
    """nDCG@k of each arm's top k against the generator's true tastes (``datagen.user_tastes``): an item's gain
    is the user's weight on its category plus half their weight on its brand; the ideal list is the user's k
    best items on sale at ``as_of``. Over ``users`` (those with tastes)."""
    from pipeline.db.engine import sa_engine

    eng = sa_engine(url)
    tastes = pd.read_sql("SELECT user_id, dimension, key, weight FROM datagen.user_tastes", eng)
    cat = pd.read_sql("SELECT item_id, category, brand, in_stock, visible, created_at FROM shop.items", eng)
    cat = cat[cat["in_stock"] & cat["visible"] & (pd.to_datetime(cat["created_at"], utc=True) < pd.Timestamp(as_of))]
    users = np.intersect1d(users, tastes["user_id"].unique())
    gain = np.zeros((len(users), len(cat)))
    for dim, col, w in (("category", "category", 1.0), ("brand", "brand", 0.5)):
        t = tastes[tastes["dimension"] == dim].pivot_table(index="user_id", columns="key", values="weight",
                                                            aggfunc="sum", fill_value=0.0)
        gain += w * t.reindex(index=users, columns=cat[col].to_numpy(), fill_value=0.0).to_numpy()
    col_of = pd.Series(np.arange(len(cat)), index=cat["item_id"].to_numpy())
    row_of = pd.Series(np.arange(len(users)), index=users)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = (-np.sort(-gain, axis=1)[:, :k] * disc[: min(k, gain.shape[1])]).sum(axis=1)
    out = {}
    for name, recs in arms.items():
        top = recs[(recs["rank"] <= k) & recs["user_id"].isin(users) & recs["item_id"].isin(col_of.index)]
        g = gain[row_of[top["user_id"]].to_numpy(), col_of[top["item_id"]].to_numpy()]
        dcg = np.zeros(len(users))
        np.add.at(dcg, row_of[top["user_id"]].to_numpy(), g * disc[top["rank"].to_numpy(dtype=int) - 1])
        out[name] = float(np.mean(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1), 0.0)))
    return out


def seen_share(recs: pd.DataFrame, seen: pd.DataFrame, users: np.ndarray, k: int = K) -> float:
    """Share of the top-``k`` slots of ``users``' lists that hold an item the user touched before as_of."""
    top = recs[(recs["rank"] <= k) & recs["user_id"].isin(users)]
    return 1.0 - len(drop_seen(top, seen)) / len(top) if len(top) else 0.0


def renumber(recs: pd.DataFrame) -> pd.DataFrame:
    """Ranks 1..n again after rows were removed."""
    out = recs.sort_values(["user_id", "rank"], kind="stable").copy()
    out["rank"] = out.groupby("user_id").cumcount() + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--days", type=int, default=21, help="days of generated events, test days included")
    ap.add_argument("--test-days", type=int, default=3, help="days of events after as_of in the shop")
    ap.add_argument("--window-days", type=int, default=None, help="truth window (default: --test-days)")
    ap.add_argument("--top-n", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=300, help="RERANK_CANDIDATES of the nightly arms")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-plain-arm", action="store_true",
                    help="skip the diagnostic arm 'ranker, re-rank off' (no MMR, caps or exploration)")
    ap.add_argument("--retarget-cap", type=float, default=1.0,
                    help="the arm 'ranker, retarget uncapped' sets max_retarget_share to this (the default "
                         "caps at 0.2; 0.2 here skips the arm)")
    ap.add_argument("--arm", action="append", default=[], metavar="LABEL=JSON",
                    help="an extra ranker arm with these re-rank overrides, e.g. 'no MMR={\"mmr_lambda\": 1}' "
                         "(repeatable)")
    ap.add_argument("--url", help="a server to create the eval_nightly_* databases on (default: database_url())")
    ap.add_argument("--home", help="RERANK_HOME of the embedded server (default: the RERANK_HOME setting)")
    args = ap.parse_args()
    from pipeline.datagen import generate_shop
    from pipeline.db import migrate
    from pipeline.db.engine import database_url
    from pipeline.rerank import RerankConfig
    from pipeline.settings import load_settings

    if args.test_days < 1 or args.days <= args.test_days:
        ap.error("--days must exceed --test-days >= 1")
    window = timedelta(days=args.window_days or args.test_days)
    server = args.url or database_url(load_settings(**({"home": args.home} if args.home else {})))
    end = datetime(2026, 11, 24, tzinfo=UTC)
    as_of = end - timedelta(days=args.test_days)

    t = time.perf_counter()
    shop_url = fresh_database(server, SHOP_DB)
    migrate.upgrade(shop_url)
    g = generate_shop(shop_url, users=args.users, items=args.items, days=args.days, seed=args.seed, end=end)
    print(f"shop: {g.users} users, {g.items} items, {g.events} events over {args.days} days to {end:%Y-%m-%d} "
          f"(seed {args.seed}); as_of {as_of:%Y-%m-%d}, truth window {window.days} d; {time.perf_counter() - t:.1f} s")
    ev, items, users = read_shop(shop_url, as_of + window)
    truth = truth_pairs(ev, items, users, as_of, window)
    truth_all = truth_pairs(ev, items, users, as_of, window, new_only=False)
    seen = seen_pairs(ev, as_of)
    n_truth_users = truth["user_id"].nunique()
    print(f"truth: {len(truth)} (user, new item) intent pairs for {n_truth_users} users; with re-engagements "
          f"(items seen before as_of) {len(truth_all)} pairs for {truth_all['user_id'].nunique()} users")

    plan = [("recall-only", False, None), ("ranker", True, None)]
    if not args.no_plain_arm:
        plan.append(("ranker, re-rank off", True, {"mmr_lambda": 1.0, "max_category_share": 1.0,
                                                    "max_brand_share": 1.0, "explore_share": 0.0,
                                                    "max_retarget_share": 1.0}))
    if args.retarget_cap != RerankConfig().max_retarget_share:
        plan.append(("ranker, retarget uncapped", True, {"max_retarget_share": args.retarget_cap}))
    for spec in args.arm:
        label, sep, overrides = spec.partition("=")
        try:
            extra = json.loads(overrides) if sep else None
        except json.JSONDecodeError as exc:
            ap.error(f"--arm {spec!r}: {exc}")
        if not label or not isinstance(extra, dict):
            ap.error(f"--arm {spec!r}: give LABEL=JSON object of re-rank overrides")
        RerankConfig().with_overrides(extra)  # unknown names or bad values fail before any arm runs
        plan.append((label, True, extra))
    arms: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory(prefix="eval-nightly-") as tmp:
        for label, retrain, rerank in plan:
            lists, res, secs = run_arm(server, label, retrain=retrain, as_of=as_of, top_n=args.top_n,
                                       candidates=args.candidates, seed=args.seed, home_root=Path(tmp),
                                       rerank=rerank)
            arms[label] = lists
            tr, gate = res.get("train_ranker", {}), res.get("evaluate_gate", {})
            print(f"nightly {label}: {secs:.1f} s, {lists['user_id'].nunique()} users published, "
                  f"scoring model {gate.get('scoring_model')}")
            if tr.get("trained"):
                print(f"  ranker's own holdout {tr.get('holdout')}: nDCG@10 {tr.get('ndcg@10'):.4f} vs recall-only "
                      f"{tr.get('recall_only_ndcg@10'):.4f}; on items new to the user {tr.get('ndcg@10_new'):.4f} "
                      f"vs {tr.get('recall_only_ndcg@10_new'):.4f} ({tr.get('holdout_users_new')} of "
                      f"{tr.get('holdout_users')} users); {tr.get('windows')} windows, {tr.get('epochs')} "
                      f"epochs; gate: {gate.get('reason')}")
            elif retrain:
                print(f"  no model trained: {tr.get('reason')}")
    listed = users.loc[users["created_at"] < pd.Timestamp(as_of), "user_id"].to_numpy()
    arms["popularity"] = popularity_lists(ev, items, listed, as_of, args.top_n)

    metrics = {name: score(truth, recs, args.top_n) for name, recs in arms.items()}
    table = pd.DataFrame(metrics).T
    print(f"\nover the {n_truth_users} users with at least one new intent item in the window "
          f"(lists of {args.top_n}; K = {K}):")
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))

    def ratio(a: str, b: str, m: str) -> str:
        d = metrics[b][m]
        return f"{metrics[a][m] / d:.2f}" if d else "n/a"

    print()
    pairs = [("ranker", "recall-only"), ("ranker", "popularity"), ("recall-only", "popularity")]
    pairs += [(a, "ranker") for a in ("ranker, re-rank off", "ranker, retarget uncapped") if a in arms]
    pairs += [(spec.partition("=")[0], "ranker") for spec in args.arm]
    for a, b in pairs:
        print(f"{a} / {b}: " + ", ".join(f"{m} {ratio(a, b, m)}" for m in
                                         ("ndcg@10", "hr@10", "recall@10", f"recall@{args.top_n}")))

    # Diagnostics: why the published lists score as they do under the new-items truth.
    truth_users = truth["user_id"].unique()
    all_users = truth_all["user_id"].nunique()
    rows = {}
    for name, recs in arms.items():
        rows[name] = {
            "seen@10": seen_share(recs, seen, truth_users),
            "ndcg@10 seen removed": score(truth, renumber(drop_seen(recs, seen)), args.top_n)["ndcg@10"],
            "ndcg@10 all-intent": score(truth_all, recs, args.top_n)["ndcg@10"],
            "hr@10 all-intent": score(truth_all, recs, args.top_n)["hr@10"],
        }
    print(f"\ndiagnostics: seen@10 = share of top-10 slots (truth users) holding an item the user touched before "
          f"as_of (never a hit above);\n'seen removed' = the same lists with those items dropped and ranks closed "
          f"up (not what is published);\n'all-intent' = truth that keeps re-engagements with seen items "
          f"({all_users} users):")
    print(pd.DataFrame(rows).T.to_string(float_format=lambda x: f"{x:.4f}"))
    listed_users = np.asarray(listed, dtype=np.int64)
    tn = tastes_ndcg(shop_url, arms, items, listed_users, as_of)
    print(f"\nagainst the generator's true tastes (datagen.user_tastes; gain = category weight + half the brand "
          f"weight, ideal = the user's {K} best items on sale), nDCG@{K} over {len(listed_users)} users: "
          + ", ".join(f"{name} {v:.4f}" for name, v in tn.items()))
    for k, v in arms.items():
        if "source" in v:
            top = v[v["rank"] <= K]
            print(f"sources of {k} top-10: {top['source'].value_counts(normalize=True).round(3).to_dict()}")


if __name__ == "__main__":
    main()
