"""What a refresh reuses from the live nightly run: item features, neighbours, titles, the champion ranker,
and every table derived from them alone (:class:`pipeline.refresh.fresh.LiveTables`: available items,
popularity and per-category tops, trimmed neighbours, search text and query matches).

Loaded once per live publication and cached in the process, keyed by (database, home, publication id,
champion version): ``--follow`` reloads only when a nightly run publishes or a new champion is promoted,
so a refresh batch costs its users' work, not a snapshot read. :func:`clear_cache` drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.refresh.fresh import LiveTables, live_tables


@dataclass(frozen=True)
class LiveRun:
    """The live publication's inputs for a refresh."""

    publication_id: int
    run_id: str
    generated_at: datetime
    item_feats: pd.DataFrame
    neighbours: pd.DataFrame
    item_text: pd.Series
    model_version: str
    p_rank: Scorer | None
    #: Optional inputs of generate_candidates: ``factors`` (ALS, for the fold-in) and ``text_index``.
    recall_kwargs: dict
    #: Tables derived from item_feats and neighbours, reused by every batch of this live run.
    tables: LiveTables


_CACHE: dict[tuple, LiveRun] = {}
#: P_rank of candidates: (candidates, the users' events, item features, as_of) -> probabilities.
Scorer = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame, datetime], pd.Series]


def _champion(url: str, version: str | None, snap: Path | None = None) -> tuple[str, Scorer | None]:
    """The champion ranker when one is registered (torch is imported only then); else recall-only ordering.

    ``snap``: the live run's snapshot, whose item embeddings the ranker reads (items it never saw, too)."""
    if version is None:
        return "recall-only", None
    try:
        from pipeline.rank.score import load_champion
    except ImportError:
        return "recall-only", None
    model = load_champion(url)
    if model is None:  # registered, but its files are gone: the ranker package has logged why
        return "recall-only", None

    from pipeline.rank.features import load_item_embeddings

    emb = load_item_embeddings(str(snap / "item_embeddings.parquet")) if snap is not None else None

    def score(cand: pd.DataFrame, events: pd.DataFrame, item_feats: pd.DataFrame, as_of: datetime) -> pd.Series:
        return pd.Series(model.score(cand, events, item_feats, as_of, emb=emb), index=cand.index, dtype="float64")

    return str(getattr(model, "version", None) or version), score


def _neighbours(url: str, snap: Path, publication_id: int) -> pd.DataFrame:
    """The run's neighbours from its snapshot, else from the published similar table."""
    if (snap / "neighbours.parquet").exists():
        return pd.read_parquet(snap / "neighbours.parquet", columns=["item_id", "similar_item_id", "score"])
    from psycopg2 import sql

    from pipeline.db.engine import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT similar_table FROM recsys.publications WHERE publication_id = %s", (publication_id,))
        row = cur.fetchone()
        if not row or not row[0]:
            return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "similar_item_id": pd.Series(dtype="int64"),
                                 "score": pd.Series(dtype="float64")})
        cur.execute(sql.SQL("SELECT item_id, similar_item_id, score FROM {}").format(sql.Identifier("recsys", row[0])))
        return pd.DataFrame(cur.fetchall(), columns=["item_id", "similar_item_id", "score"])


def _recall_kwargs(snap: Path, available: pd.DataFrame) -> dict:
    """ALS item factors with *no* user rows, so generate_candidates folds every refreshed user in from the
    current history (the nightly user vectors predate the fresh events); a text index for search recall.
    Both are optional: a run without factors, or a recall package without them, recalls without."""
    kw: dict = {}
    try:
        from pipeline.recall.factors import Factors, load_factors
        from pipeline.recall.stage import factors_dir
    except ImportError:
        return kw
    fdir = factors_dir(snap)
    if (fdir / "item_factors.npy").exists():
        f = load_factors(fdir)
        kw["factors"] = Factors(user_factors=f.user_factors[:0], item_factors=f.item_factors,
                                user_ids=f.user_ids[:0], item_ids=f.item_ids, meta=f.meta)
    try:
        from pipeline.recall.text import TextIndex, item_texts
    except ImportError:
        return kw
    if len(available):
        kw["text_index"] = TextIndex(available["item_id"].to_numpy(), item_texts(available).tolist())
    return kw


def load_live(url: str, home: str | Path, pub: dict, champion: str | None = None) -> LiveRun:
    """The live run's inputs (cached per home, publication and champion model version)."""
    key = (url, str(home), int(pub["publication_id"]), champion)
    if key in _CACHE:
        return _CACHE[key]
    snap = Path(home).expanduser().resolve() / "runs" / pub["run_id"] / "snapshot"
    if not (snap / "item_features.parquet").exists():
        raise PipelineError(f"the live run {pub['run_id']}'s snapshot is not under {snap}",
                            "RERANK_HOME must be the home the nightly run wrote to")
    feats = pd.read_parquet(snap / "item_features.parquet")
    items = pd.read_parquet(snap / "items.parquet", columns=["item_id", "title"])
    feats = feats.merge(items, on="item_id", how="left")
    version, scorer = _champion(url, champion, snap)
    tables = live_tables(feats, _neighbours(url, snap, int(pub["publication_id"])))
    live = LiveRun(publication_id=int(pub["publication_id"]), run_id=str(pub["run_id"]),
                   generated_at=pub["generated_at"], item_feats=feats, neighbours=tables.neighbours,
                   item_text=tables.item_text, model_version=version, p_rank=scorer,
                   recall_kwargs=_recall_kwargs(snap, tables.available), tables=tables)
    _CACHE.clear()  # one live run at a time: drop the previous publication's frames
    _CACHE[key] = live
    return live


def cached_runs_for(url: str, home: str | Path) -> bool:
    """Whether a live run of this database and home is cached (whichever publication it is)."""
    return any(k[0] == url and k[1] == str(home) for k in _CACHE)


def cached_runs() -> list[tuple]:
    """Keys of the cached live runs (at most one): (url, home, publication_id, champion)."""
    return list(_CACHE)


def clear_cache() -> None:
    """Forget the cached live run (the next batch reloads it from the snapshot)."""
    _CACHE.clear()
