"""The one per-user path: recall -> rank -> re-rank, shared by the nightly shard, the refresh and the evaluator.

:func:`recommend` takes users, their history up to a cut-off and a run's :class:`Artefacts` (item features,
neighbours, ALS factors, content and text indexes, item embeddings, the champion ranker) and returns their
final lists with reasons. Nothing else composes recall, ranking and re-rank:

- the nightly's Dask task (:func:`pipeline.nightly.recommend_shard`) calls it per shard, with the artefacts
  of the run loaded once per worker (:func:`load_artefacts`);
- the refresh calls it per batch with the live run's artefacts and the batch's event ids (``fresh_ids``),
  which switch on the fresh-behaviour sources of :mod:`pipeline.recall.fresh`; the live run's ALS factors
  keep no user rows, so every refreshed user is folded in from the current history;
- ``rerank evaluate --models nightly`` scores the lists the nightly published through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import files_stamp
from pipeline.frames import pair_index
from pipeline.recall.candidates import RecallConfig, generate_candidates
from pipeline.recall.factors import Factors
from pipeline.recall.fresh import (
    ALL_SOURCES,
    FRESH_PRIOR,
    RunTables,
    fresh_cf,
    fresh_events,
    run_tables,
    search_match,
    session_intent,
)
from pipeline.rerank import (
    RerankConfig,
    caps_every_seen_item,
    fill_empty_lists,
    finalize_lists,
    repurchasable_categories,
    split_by_arm,
)
from pipeline.rerank.rules import purchase_exclusions
from pipeline.runs import RUN_MODEL_FILE

#: Columns finalize_lists reads (the ranker reads all of them, the re-rank only these).
_FINAL_COLUMNS = ["user_id", "item_id", "source", "p_recall", "anchor_item_id", "p_rank", "score_retarget"]


@dataclass(frozen=True)
class RecommendConfig:
    """How many items, from how much history: the settings' values by :meth:`from_settings`."""

    top_n: int = 50
    n_candidates: int = 300
    recent_days: int = 7
    #: Minutes of a user's latest events that count as "fresh" besides the batch itself (refresh only).
    fresh_minutes: int = 60
    #: Neighbours taken per fresh item (refresh only).
    neighbours_per_item: int = 20
    weights: dict[str, float] = field(default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 4.0,
                                                               "purchase": 8.0})
    half_life_days: dict[str, float] = field(default_factory=dict)
    #: What event ages count from in recall: ``as_of`` or ``user_last`` (RERANK_DECAY_FROM).
    decay_from: str = "as_of"
    #: Overrides of the recall sources' priors (RERANK_RECALL_PRIORS).
    priors: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: object | None = None, **overrides: object) -> RecommendConfig:
        """The settings' top_n, candidates, recent days, event weights and half-lives (``overrides`` win)."""
        from pipeline.settings import get_settings

        s = settings or get_settings()
        base = {"top_n": s.top_n, "n_candidates": s.candidates, "recent_days": s.recent_days,
                "weights": dict(s.event_weights), "half_life_days": dict(s.half_life_days), "decay_from": s.decay_from,
                "priors": dict(s.recall_priors)}
        return cls(**{**base, **overrides})


@dataclass
class Artefacts:
    """A run's inputs to :func:`recommend`, loaded once per process and run.

    ``ranker``: the model that scores candidates (``.score(cand, events, item_feats, as_of, emb=)``), None for
    recall-only ordering; ``ranker_emb`` the item embeddings it was trained with; ``item_embeddings`` those
    the re-rank's MMR reads."""

    tables: RunTables
    factors: Factors | None = None
    content_index: object | None = None
    text_index: object | None = None
    item_embeddings: object | None = None
    ranker: object | None = None
    ranker_emb: pd.DataFrame | None = None
    model_version: str = "recall-only"
    #: The ``seq`` source's followers table (None: the run has none, the source is off).
    followers: pd.DataFrame | None = None
    #: The run's snapshot folder: the search index reads its multilingual item text vectors from there.
    snapshot_dir: str | None = None
    #: Recall's priors for this run (they win over the config's): the ranker's own, which it was trained with,
    #: or, ordering by recall only, those the run chose (``model.json``; pipeline.rank.tune). None: the config's.
    priors: dict[str, float] | None = None

    @property
    def item_feats(self) -> pd.DataFrame:
        return self.tables.item_feats

    @property
    def neighbours(self) -> pd.DataFrame:
        return self.tables.neighbours

    def text_index_for(self, events: pd.DataFrame) -> object | None:
        """The search index, built on first need (only users who searched use it): semantic (queries in any
        language) when the run's features stage wrote multilingual item text vectors, else lexical."""
        if self.text_index is None and (events["event_type"] == "search").any():
            from pipeline.recall.text import catalogue_search_index

            avail = self.tables.available
            if len(avail) and "title" in avail:
                self.text_index = catalogue_search_index(avail, self.snapshot_dir)
        return self.text_index


def artefacts(item_feats: pd.DataFrame, neighbours: pd.DataFrame, **kw: object) -> Artefacts:
    """:class:`Artefacts` of in-memory frames (item features with titles, neighbours) and optional parts."""
    return Artefacts(tables=run_tables(item_feats, neighbours), **kw)


def load_artefacts(snapshot_dir: str | Path, artifact_uri: str | Path | None = None, *, fold_in: bool = False,
                   neighbours: pd.DataFrame | None = None, model_version: str | None = None) -> Artefacts:
    """The artefacts a run left under its snapshot, cached per process, files' version and model.

    ``fold_in``: drop the ALS user rows so every user is folded in from the history given to
    :func:`recommend` (the refresh: the nightly vectors predate the fresh events). ``neighbours``: the run's
    neighbours when they are not in the snapshot (a live run known only by its published similar table)."""
    from pipeline.recall.stage import factors_dir

    snap = Path(snapshot_dir).resolve()
    files = [snap / f for f in ("items.parquet", "item_features.parquet", "neighbours.parquet",
                                "item_embeddings.parquet", "item_embeddings.json", "item_text_embeddings.parquet",
                                "followers.parquet")]
    files += [factors_dir(snap) / f for f in ("user_factors.npy", "item_factors.npy")]
    files.append(snap.parent / RUN_MODEL_FILE)
    if artifact_uri:
        files += sorted(Path(artifact_uri).glob("*"))
    if neighbours is not None:
        return _load(str(snap), str(artifact_uri or ""), fold_in, files_stamp(files), model_version, neighbours)
    return _load_cached(str(snap), str(artifact_uri or ""), fold_in, files_stamp(files), model_version)


def release_caches() -> None:
    """Drop every run's artefacts this process holds (the per-worker caches of :func:`load_artefacts` and of
    the files under it): a stage that scored leaves its workers as it found them for the next stage."""
    from pipeline.rank.score import release_models
    from pipeline.recall.content import release_index
    from pipeline.recall.stage import release_tables

    _load_cached.cache_clear()
    release_index()
    release_tables()
    release_models()


@lru_cache(maxsize=2)
def _load_cached(snap: str, artifact_uri: str, fold_in: bool, stamp: tuple, model_version: str | None) -> Artefacts:
    return _load(snap, artifact_uri, fold_in, stamp, model_version, None)


def _load(snap: str, artifact_uri: str, fold_in: bool, stamp: tuple, model_version: str | None,
          neighbours: pd.DataFrame | None) -> Artefacts:
    from pipeline.recall.content import content_index_for
    from pipeline.recall.stage import load_followers, run_recall_tables
    from pipeline.rerank import load_item_embeddings

    feats, nb, fac = run_recall_tables(snap)
    if neighbours is not None:
        nb = neighbours
    if fac is not None and fold_in:
        fac = Factors(user_factors=fac.user_factors[:0], item_factors=fac.item_factors, user_ids=fac.user_ids[:0],
                      item_ids=fac.item_ids, meta=fac.meta, weighting=fac.weighting)
    art = Artefacts(tables=run_tables(feats, nb), factors=fac, content_index=content_index_for(snap),
                    item_embeddings=load_item_embeddings(Path(snap)), followers=load_followers(snap),
                    snapshot_dir=snap)
    if artifact_uri:
        from pipeline.rank.features import load_item_embeddings as ranker_embeddings
        from pipeline.rank.score import load_model  # cached per worker process

        art.ranker = load_model(artifact_uri)
        # the embeddings the model trained and was gated with: items it never saw still get theirs
        art.ranker_emb = ranker_embeddings(str(Path(snap) / "item_embeddings.parquet"))
        art.model_version = model_version or str(getattr(art.ranker, "version", None) or Path(artifact_uri).name)
        art.priors = (getattr(art.ranker, "metrics", None) or {}).get("recall_priors")
    else:
        chosen = Path(snap).parent / RUN_MODEL_FILE
        art.priors = json.loads(chosen.read_text()).get("recall_priors") if chosen.exists() else None
    return art


def recall(users: np.ndarray, events: pd.DataFrame, art: Artefacts, as_of: datetime, cfg: RecommendConfig, *,
           rerank: RerankConfig | None = None, variants: dict | None = None,
           sources: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The recall step of :func:`recommend`: ``users``' merged candidates from the run's artefacts, with every
    column of :func:`~pipeline.recall.candidates.generate_candidates` (the ranker reads the per-source scores).

    ``rerank``/``variants``: categories whose bought items stay candidates (a repurchase window may bring them
    back); ``sources``: only these sources (the audit and tests of one source)."""
    tables = art.tables
    rcfg = RecallConfig(as_of=as_of, n_candidates=cfg.n_candidates, recent_days=cfg.recent_days,
                        weights=cfg.weights, half_life_days=cfg.half_life_days, decay_from=cfg.decay_from,
                        priors=cfg.priors if art.priors is None else art.priors,
                        repurchasable=repurchasable_categories(rerank, variants, also=RecallConfig.repurchasable))
    return generate_candidates(np.asarray(users, dtype="int64"), events, tables.neighbours, tables.item_feats,
                               rcfg, tables=tables.items, factors=art.factors, content_index=art.content_index,
                               text_index=art.text_index_for(events), followers=art.followers, sources=sources)


def recommend(users: np.ndarray, events: pd.DataFrame, art: Artefacts, as_of: datetime, cfg: RecommendConfig, *,
              fresh_ids: np.ndarray | None = None, rerank: RerankConfig | None = None,
              rules: pd.DataFrame | None = None, variants: dict | None = None,
              variant_salt: str = "rerank-ab",
              user_feats: pd.DataFrame | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """``users``' final lists (``user_id, rank, item_id, score, reason, anchor_item_id, source[, variant]``) and
    the users left without one because nothing is eligible.

    ``events``: the users' clean events up to ``as_of`` (``event_id, user_id, item_id, event_type, query,
    session_id, quantity, ts``); events stamped at ``as_of`` count. ``fresh_ids``: the event ids of a refresh
    batch, which add the fresh sources (their rows' reasons name the fresh item or query). ``rerank``,
    ``rules``, ``variants`` and ``variant_salt``: the re-rank (settings, merchandisers' rules, A/B arms).
    ``user_feats``: the run's user_features rows of ``users`` for the ranker (the nightly shard reads its parts);
    without them (the refresh: newer events than the run saw) the ranker computes them from ``events``."""
    users = np.unique(np.asarray(users, dtype="int64"))
    tables = art.tables
    # All of generate_candidates' columns stay (per-source scores, ``sources``): the ranker reads them.
    base = recall(users, events, art, as_of, cfg, rerank=rerank, variants=variants)
    cand, hint = base, np.full(len(base), None, dtype=object)
    if fresh_ids is not None:
        fresh = fresh_events(events, fresh_ids, as_of, cfg.fresh_minutes)
        extra = [f for f in (fresh_cf(fresh, tables.neighbours, tables.titles, cfg, tables=tables),
                             session_intent(fresh, tables.available, cfg, tables=tables),
                             search_match(fresh, tables.item_text, cfg, tables=tables)) if len(f)]
        if extra:
            ex = pd.concat(extra, ignore_index=True)
            ex["p_recall"] = ex["source"].map(FRESH_PRIOR) * (0.5 + 0.5 * ex["recall_score"].astype("float64"))
            ex["p_recall"] = _with_base_evidence(base, ex)
            hint = np.concatenate([hint, ex["hint"].to_numpy(dtype=object)])
            ex = ex.reindex(columns=base.columns)
            for col in base.columns:
                if col.startswith("score_"):
                    ex[col] = 0.0  # per-source scores of the run's sources, which did not propose these rows
            if "score_retarget" in base:
                ex["score_retarget"] = _retarget_scores(base, ex)
            if "sources" in ex:
                ex["sources"] = ex["source"]
            cand = pd.concat([base, ex], ignore_index=True) if len(base) else ex
    ev = events[events["item_id"].notna()]
    bought = ev.loc[ev["event_type"] == "purchase", ["user_id", "item_id", "ts"]].astype(
        {"user_id": "int64", "item_id": "int64"})
    # bought items stay out, except those past their category's repurchase window in the user's A/B arm
    excluded = _purchase_exclusions_by_arm(bought, tables.item_feats, as_of, rerank, variants, variant_salt)
    keep = _best_candidates(cand, users, tables.items.available_ids, excluded, cfg.n_candidates)
    hint = hint[keep]
    cand = cand.iloc[keep].reset_index(drop=True)
    cand = cand.astype({"user_id": "int64", "item_id": "int64", "p_recall": "float64"})
    cand["anchor_item_id"] = cand["anchor_item_id"].astype("Int64")
    # The ranker sees events strictly before its as_of; a second of slack keeps events stamped as_of in view.
    cand["p_rank"] = (np.asarray(art.ranker.score(cand, events, tables.item_feats,
                                                  pd.Timestamp(as_of) + pd.Timedelta(seconds=1), emb=art.ranker_emb,
                                                  **({} if user_feats is None else {"user_feats": user_feats})),
                                 dtype="float64")
                      if art.ranker is not None and len(cand) else 1.0)
    final = [c for c in _FINAL_COLUMNS if c in cand.columns]  # the re-rank reads these; less to copy per step
    opts = {"top_n": cfg.top_n, "bought": bought, "config": rerank, "variants": variants or None,
            "variant_salt": variant_salt, "rules": rules, "as_of": as_of, "seen": None,
            "item_embeddings": art.item_embeddings}
    if caps_every_seen_item(rerank, variants):
        opts["seen"] = ev[["user_id", "item_id"]].drop_duplicates()
    lists, exhausted = fill_empty_lists(finalize_lists(cand[final], tables.item_feats, **opts), users,
                                        tables.item_feats, **opts)
    if fresh_ids is not None and len(lists):
        hints = cand[["user_id", "item_id"]].assign(hint=hint)
        lists = lists.merge(hints, on=["user_id", "item_id"], how="left")
        fresh_src = lists["source"].isin(list(FRESH_PRIOR)) & lists["hint"].notna()
        lists.loc[fresh_src, "reason"] = lists.loc[fresh_src, "hint"]
        lists = lists.drop(columns="hint")
    return lists, exhausted


def _purchase_exclusions_by_arm(bought: pd.DataFrame, item_feats: pd.DataFrame, now: datetime,
                                rerank: RerankConfig | None, variants: dict | None, salt: str) -> pd.DataFrame:
    """(user_id, item_id) pairs each buyer's own A/B arm still excludes: an arm with its own repurchase
    windows must see the items they bring back among the candidates, as its re-rank does."""
    parts = [purchase_exclusions(bought[bought["user_id"].isin(mine)], item_feats, as_of=now,
                                 windows=c.repurchase_days)
             for _, c, mine in split_by_arm(bought["user_id"], rerank, variants, salt)]
    return pd.concat(parts, ignore_index=True) if parts else purchase_exclusions(bought, item_feats, as_of=now)


def _with_base_evidence(base: pd.DataFrame, ex: pd.DataFrame) -> np.ndarray:
    """Fresh item rows' p_recall raised to their pair's p_recall in ``base`` where that is higher: a just-viewed
    item's neighbour or a fresh query's match that the run's sources (seq among them, which reads the same fresh
    history) also propose keeps its fresh reason (as the dedupe's tie-break by source name allows), at the rank the
    base row had: the lists' order is unchanged. Session rows are left as they are."""
    p = ex["p_recall"].to_numpy(dtype="float64")
    if base.empty or ex.empty:
        return p
    pb = pd.Series(base["p_recall"].to_numpy(dtype="float64"), index=pair_index(base))
    pb = pb[~pb.index.duplicated()].reindex(pair_index(ex)).fillna(0.0).to_numpy()
    pb = np.where(ex["source"].isin(["fresh-cf", "fresh-search"]).to_numpy(), pb, 0.0)
    return np.maximum(p, pb)


def _retarget_scores(base: pd.DataFrame, ex: pd.DataFrame) -> np.ndarray:
    """``score_retarget`` of ``ex``'s (user, item) pairs in ``base`` (0 where retarget did not propose them):
    a fresh row that wins the dedupe over its retarget row still counts under the re-rank's retarget cap."""
    rt = base.loc[base["score_retarget"].fillna(0.0) > 0, ["user_id", "item_id", "score_retarget"]]
    if rt.empty or ex.empty:
        return np.zeros(len(ex))
    rt = rt.groupby(["user_id", "item_id"])["score_retarget"].max()
    key = pair_index(ex)
    return rt.reindex(key).fillna(0.0).to_numpy(dtype="float64")


def _best_candidates(cand: pd.DataFrame, users: np.ndarray, available_ids: np.ndarray, bought: pd.DataFrame,
                     n: int) -> np.ndarray:
    """Row positions of each user's best ``n`` candidates: only ``users``, available and not bought items;
    one row per (user, item), the highest p_recall (ties: the source first by name, then the earlier row);
    ordered by user, p_recall desc, item id. Integer keys and one stable lexsort each, no string sort."""
    if cand.empty:
        return np.zeros(0, dtype="int64")
    u = cand["user_id"].to_numpy(dtype="int64")
    i = cand["item_id"].to_numpy(dtype="int64")
    p = cand["p_recall"].to_numpy(dtype="float64")
    ok = np.isin(u, users) & np.isin(i, available_ids)
    if len(bought):
        span = int(max(i.max(), bought["item_id"].max())) + 1
        ok &= ~np.isin(u * span + i, bought["user_id"].to_numpy(dtype="int64") * span
                       + bought["item_id"].to_numpy(dtype="int64"))
    src = np.asarray(pd.Categorical(cand["source"], categories=ALL_SOURCES).codes, dtype="int64")
    rows = np.flatnonzero(ok)
    rows = rows[np.lexsort((src[rows], -p[rows], i[rows], u[rows]))]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (u[rows][1:] != u[rows][:-1]) | (i[rows][1:] != i[rows][:-1])
    rows = rows[first]
    rows = rows[np.lexsort((i[rows], -p[rows], u[rows]))]
    ur = u[rows]
    starts = np.flatnonzero(np.r_[True, ur[1:] != ur[:-1]]) if len(rows) else np.zeros(0, dtype="int64")
    pos = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
    return rows[pos < n]


__all__ = ["Artefacts", "RecommendConfig", "artefacts", "load_artefacts", "recommend"]
