"""Run an offline evaluation: interactions -> protocol split -> fit/recommend each model -> metrics -> files.

``evaluate_frames`` works on in-memory :class:`ShopFrames`; ``run_evaluation`` reads a public dataset
(and, given a database URL, round-trips it through ``shop.*``) and calls it. Everything a reader needs
to recompute the figures lands in ``out_dir``: metrics.json, train.csv, test.csv (plus valid.csv for
leave-one-out), recs_<model>.csv, segments.csv, details.json and report.html.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics as M
from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate.models import Recommender, get_model
from pipeline.evaluate.protocols import PROTOCOLS, leave_one_out, msr_stratified_split, temporal_split
from pipeline.evaluate.report import write_report
from pipeline.frames import EVENT_COL, ITEM_COL, RANK_COL, RATING_COL, TS_COL, USER_COL, ShopFrames

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("random", "popularity", "item-cf", "als", "bpr")
#: Implicit weight per event type when the data has no rating (view < click < cart < purchase).
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "favorite": 2.0, "add_to_cart": 3.0, "purchase": 4.0}


def interactions(frames: ShopFrames, *, dedupe: bool = True) -> pd.DataFrame:
    """user_id, item_id, rating, ts (+ event_id) from the events; search events (no item) are dropped.

    ``rating`` is the data's own rating column when it has one, else the event-type weight. With
    ``dedupe`` a repeated (user, item) keeps its strongest rating and its first timestamp, as a
    user-item protocol needs one row per pair.
    """
    ev = frames.events
    for col in (USER_COL, ITEM_COL):
        if col not in ev.columns:
            raise InputDataError(f"events have no {col!r} column", "the frames must follow the shop contract")
    ev = ev[ev[ITEM_COL].notna()]
    cols = [c for c in ("event_id", USER_COL, ITEM_COL, RATING_COL, TS_COL) if c in ev.columns]
    df = ev[cols].copy()
    df[USER_COL] = df[USER_COL].astype("int64")
    df[ITEM_COL] = df[ITEM_COL].astype("int64")
    if RATING_COL in df.columns and df[RATING_COL].notna().any():
        df[RATING_COL] = pd.to_numeric(df[RATING_COL], errors="coerce").fillna(1.0).astype("float64")
    elif EVENT_COL in ev.columns:
        df[RATING_COL] = ev[EVENT_COL].map(EVENT_WEIGHTS).fillna(1.0).astype("float64").to_numpy()
    if dedupe and df.duplicated([USER_COL, ITEM_COL]).any():
        sort = [c for c in (TS_COL, "event_id") if c in df.columns]
        df = df.sort_values(sort, kind="stable") if sort else df
        agg = {c: "first" for c in df.columns if c not in (USER_COL, ITEM_COL)}
        if RATING_COL in df.columns:
            agg[RATING_COL] = "max"
        df = df.groupby([USER_COL, ITEM_COL], as_index=False, sort=False).agg(agg)
        df = df.sort_values(["event_id"] if "event_id" in df.columns else sort, kind="stable")
    return df.reset_index(drop=True)


def _csv(df: pd.DataFrame, path: Path) -> None:
    cols = [c for c in (USER_COL, ITEM_COL, RATING_COL, TS_COL) if c in df.columns]
    out = df[cols].copy()
    if TS_COL in out.columns and pd.api.types.is_datetime64_any_dtype(out[TS_COL]):
        # unix seconds: what MovieLens ships and what any library reads without a timezone parser
        ts = pd.to_datetime(out[TS_COL], utc=True)
        out[TS_COL] = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    out.to_csv(path, index=False)


def _item_categories(frames: ShopFrames) -> pd.Series | None:
    items = frames.items
    if items is None or "category" not in items.columns or items["category"].isna().all():
        return None
    return items.dropna(subset=["category"]).drop_duplicates(ITEM_COL).set_index(ITEM_COL)["category"]


def _beyond(recs: pd.DataFrame, train: pd.DataFrame, k: int, cats: pd.Series | None,
            emb: tuple) -> dict[str, float]:
    out = {"novelty": M.novelty(recs, train, k), "popularity_bias": M.popularity_bias(recs, train, k),
           f"ild_cooc@{k}": M.intra_list_diversity(recs, k, item_embeddings=emb)}
    if cats is not None:
        out[f"ild_category@{k}"] = M.intra_list_diversity(recs, k, item_categories=cats)
    return out


def evaluate_frames(
    frames: ShopFrames,
    *,
    protocol: str,
    k: int = 10,
    models: Sequence[str] = DEFAULT_MODELS,
    out_dir: str | Path,
    dataset: str,
    model_params: dict[str, dict] | None = None,
    cutoff: str | pd.Timestamp | None = None,
    window: str | pd.Timedelta = "1D",
    seed: int = 42,
) -> dict:
    """Evaluate ``models`` on ``frames`` under ``protocol`` and write every output file; returns metrics.json.

    msr-stratified and temporal recommend ``k`` unseen items per test user and score them with MSR's
    metrics; leave-one-out ranks the held-out item among all catalogue items minus the user's history
    (equal scores ordered as the written lists order them: training popularity, then id; the tie-aware
    figures, ties at their expected position, stand beside as ``*_tie_aware``) with models fitted once on
    items[:-2].
    """
    if protocol not in PROTOCOLS:
        raise PipelineError(f"unknown protocol {protocol!r}", f"valid protocols: {', '.join(PROTOCOLS)}")
    models = list(models)
    for name in models:  # fail before any work on a typo
        get_model(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inter = interactions(frames, dedupe=protocol != "leave-one-out")
    if inter.empty:
        raise InputDataError("no interactions with an item in the events", "the dataset import")
    loo = None
    if protocol == "msr-stratified":
        train, test = msr_stratified_split(inter, 0.75, seed)
    elif protocol == "temporal":
        train, test = temporal_split(inter, cutoff, window)
    else:
        loo = leave_one_out(inter)
        train, test = loo.train, loo.test
        _csv(loo.valid, out / "valid.csv")
    if train.empty or test.empty:
        raise InputDataError(f"the {protocol} split left {len(train)} train and {len(test)} test rows",
                             "the cutoff/window or the dataset size")
    _csv(train, out / "train.csv")
    _csv(test, out / "test.csv")

    catalog = frames.items[[ITEM_COL]] if frames.items is not None and ITEM_COL in frames.items.columns \
        else None
    if protocol == "leave-one-out":
        # full ranking over all items: every item of the data is a candidate
        catalog = pd.concat([catalog, inter[[ITEM_COL]]]) if catalog is not None else inter[[ITEM_COL]]
    elif catalog is not None:
        catalog = None  # MSR ranks the items seen in training
    cats = _item_categories(frames)
    emb = M.cooccurrence_embeddings(train)
    n_catalog = (train[ITEM_COL].nunique() if protocol != "leave-one-out"
                 else len(pd.unique(catalog[ITEM_COL])))
    test_users = pd.unique(test[USER_COL])
    results, recs_all, seg_rows, beyond, valid_rows, tuning = [], {}, [], [], [], {}
    params = model_params or {}
    for name in models:
        model: Recommender = get_model(name, **params.get(name, {}))
        model.set_item_descriptors(frames.items)  # descriptors only: the catalogue stays the protocol's
        if loo is not None:
            model.set_validation(loo.valid)  # early stopping / tuning target: item -2, never the test item
        # a model that publishes lists (nightly) cannot fold in a longer history: it runs on items[:-1] itself
        lists_only = loo is not None and getattr(model, "lists_only", False)
        t0 = time.perf_counter()
        model.fit(loo.test_history if lists_only else train, catalog)
        fit_s = time.perf_counter() - t0
        if getattr(model, "tuning", None):  # what a model chose on validation (pipeline's fusion)
            tuning[name] = model.tuning
        if loo is None:
            recs = model.recommend(test_users, k)
            r = M.ranking_metrics(test, recs, k)
        elif lists_only:
            recs = model.recommend(test_users, k)
            r = _list_loo_metrics(recs, loo.test, k)
        else:
            hist = loo.test_history
            model.set_history(hist)  # sequential models read the order of items[:-1]
            r = _loo_metrics(model, hist, loo.test, k)
            model.set_history(loo.train)
            valid_rows.append({"model": name, **{f"{m}@{k}": v for m, v in
                                                 _loo_metrics(model, loo.train, loo.valid, k).items()}})
            model.set_history(hist)
            h = model.matrix(hist[hist[USER_COL].isin(test_users)])
            rows, _ = model._rows(np.asarray(test_users))
            recs = model.recommend(test_users, k, history=h[np.maximum(rows, 0)])
            model.set_history(None)
        recs_all[name] = recs
        recs.to_csv(out / f"recs_{name}.csv", index=False)
        ild = (M.intra_list_diversity(recs, k, item_categories=cats) if cats is not None
               else M.intra_list_diversity(recs, k, item_embeddings=emb))
        results.append({"model": name, **{f"{m}@{k}": float(r[m]) for m in M.RANKING_METRICS},
                        "coverage": M.catalog_coverage(recs, n_catalog, k),
                        f"ild@{k}": float(ild) if np.isfinite(ild) else 0.0,
                        "train_seconds": round(fit_s, 4)})
        beyond.append({"model": name, **_beyond(recs, train, k, cats, emb)})
        truth = test if loo is None else loo.test
        seg = M.segment_metrics(truth, recs, train, k)
        seg.insert(0, "model", name)
        seg_rows.append(seg)
        log.info("%s: ndcg@%d=%.4f fit=%.2fs", name, k, r["ndcg"], fit_s)
    metrics = {"dataset": dataset, "protocol": protocol, "k": k, "results": results}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    segments = pd.concat(seg_rows, ignore_index=True)
    segments.to_csv(out / "segments.csv", index=False)
    notes = [f"train rows {len(train):,}, test rows {len(test):,}, test users {len(test_users):,}, "
             f"catalogue {n_catalog:,} items.",
             f"ild@{k} uses item categories" if cats is not None else
             f"ild@{k} uses co-occurrence (user-vector cosine) similarity: the items have no categories.",
             "coverage = distinct recommended items / catalogue; popularity_bias = mean share of training "
             "users who had a recommended item; novelty = mean -log2 of that share."]
    if loo is not None:
        notes.append("leave-one-out: models fitted once on items[:-2]; test ranks item -1 over all items "
                     "minus items[:-1] (item-CF and ALS fold the longer history in); equal scores in the "
                     "written lists' order (training popularity, then item id); *_tie_aware: ties at their "
                     "expected position.")
    details = {"notes": notes, "beyond": beyond, "valid": valid_rows or None, "tuning": tuning or None,
               "sizes": {"train": len(train), "test": len(test), "test_users": len(test_users)}}
    (out / "details.json").write_text(json.dumps(details, indent=2, default=float))
    write_report(out, metrics, frames, recs_all, train=train, segments=segments, details=details)
    return metrics


def _list_loo_metrics(recs: pd.DataFrame, targets: pd.DataFrame, k: int) -> dict[str, float]:
    """Leave-one-out metrics of written lists: the target's position in its user's list, a miss when it is
    not there (or the user has no list)."""
    pos = recs[[USER_COL, ITEM_COL, RANK_COL]].merge(targets[[USER_COL, ITEM_COL]], on=[USER_COL, ITEM_COL])
    ranks = pos.groupby(USER_COL)[RANK_COL].min().reindex(pd.unique(targets[USER_COL]))
    return M.single_target_metrics(ranks.fillna(np.inf).to_numpy(dtype=np.float64), k)


def _loo_metrics(model: Recommender, history: pd.DataFrame, targets: pd.DataFrame,
                 k: int) -> dict[str, float]:
    """Full-ranking metrics of each user's single target, ranked against everything not in history."""
    users = targets[USER_COL].to_numpy()
    tcol = np.searchsorted(model.item_ids, targets[ITEM_COL].to_numpy())
    ranks, tied = [], []
    step = max(1, model.batch_cells // max(len(model.item_ids), 1))
    hist = history[history[USER_COL].isin(users)]
    rows_all, _ = model._rows(users)
    H = model.matrix(hist)
    for s in range(0, len(users), step):
        ub = users[s: s + step]
        h = H[np.maximum(rows_all[s: s + step], 0)]
        sc = model.score(ub, h).astype(np.float64)
        cand = np.ones_like(sc, dtype=bool)
        cand[h.nonzero()] = False
        tc = tcol[s: s + step]
        cand[np.arange(len(ub)), tc] = True  # the target is always a candidate (even if seen before)
        ranks.append(M.written_rank(sc[np.arange(len(ub)), tc], sc, cand, model.tie_order, tc))
        tied.append(M.expected_rank(sc[np.arange(len(ub)), tc], sc, cand))
    out = M.single_target_metrics(np.concatenate(ranks) if ranks else np.zeros(0), k)
    # the tie-aware figure beside it, never in its place: ties at their expected position
    tie_aware = M.single_target_metrics(np.concatenate(tied) if tied else np.zeros(0), k)
    return {**out, **{f"{m}_tie_aware": v for m, v in tie_aware.items()}}


def run_evaluation(
    fmt: str,
    path: str | Path,
    *,
    protocol: str,
    k: int = 10,
    models: Sequence[str] | None = None,
    out_dir: str | Path,
    url: str | None = None,
    model_params: dict[str, dict] | None = None,
) -> dict:
    """Read a dataset (``pipeline.ingest.read_dataset``) and evaluate it; returns metrics.json.

    With ``url`` (a throwaway database) the dataset is also imported into ``shop.*`` and the events used
    for training are read back from ``shop.events``; the round trip must keep every row. The rating
    column (not part of the shop contract) is joined back from the parsed frames by event_id.
    ``model_params`` maps a model name to its constructor parameters (e.g. ``{"research-stack": {"mmr_lambda": 1}}``).
    """
    from pipeline.ingest import import_dataset, read_dataset

    frames = read_dataset(fmt, path)
    if url is not None:
        import_dataset(url, fmt, path)
        from pipeline.db.engine import sa_engine

        db_events = pd.read_sql("SELECT * FROM shop.events ORDER BY event_id", sa_engine(url))
        if len(db_events) != len(frames.events):
            raise PipelineError(f"shop.events holds {len(db_events)} rows after import, the parsed data "
                                f"{len(frames.events)}", "the import's quarantine counts")
        if RATING_COL in frames.events.columns:
            db_events = db_events.merge(frames.events[["event_id", RATING_COL]], on="event_id", how="left")
        db_events[TS_COL] = pd.to_datetime(db_events[TS_COL], utc=True)
        frames = ShopFrames(users=frames.users, items=frames.items, events=db_events,
                            rejects=frames.rejects, name=frames.name)
    dataset = Path(path).name if frames.name in ("", "shop", None) else frames.name
    return evaluate_frames(frames, protocol=protocol, k=k, models=list(models or DEFAULT_MODELS),
                           out_dir=out_dir, dataset=dataset, model_params=model_params)
