"""What a refresh reuses from the live nightly run: its :class:`pipeline.recommend.Artefacts` (item features,
neighbours, ALS item factors for the fold-in, content and search indexes, item embeddings, the champion
ranker) and the tables derived from them.

Loaded once per live publication and cached in the process, keyed by (database, home, publication id,
champion version): ``--follow`` reloads only when a nightly run publishes or a new champion is promoted,
so a refresh batch costs its users' work, not a snapshot read. :func:`clear_cache` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.recommend import Artefacts, load_artefacts


@dataclass(frozen=True)
class LiveRun:
    """The live publication and its artefacts."""

    publication_id: int
    run_id: str
    generated_at: datetime
    art: Artefacts

    @property
    def model_version(self) -> str:
        return self.art.model_version


_CACHE: dict[tuple, LiveRun] = {}


def _champion_uri(url: str, version: str | None) -> tuple[str | None, str | None]:
    """(artifact path, version) of the registered champion when its files exist; else recall-only (None)."""
    if version is None:
        return None, None
    from pipeline.rank.model import WEIGHTS_FILE
    from pipeline.rank.registry import champion

    row = champion(url)
    if row is None or not (Path(row["artifact_uri"]) / WEIGHTS_FILE).exists():
        import logging

        logging.getLogger(__name__).warning("champion %s has no files; the refresh orders by recall only", version)
        return None, None
    return str(row["artifact_uri"]), str(row["model_version"])


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


def load_live(url: str, home: str | Path, pub: dict, champion: str | None = None) -> LiveRun:
    """The live run's inputs (cached per home, publication and champion model version)."""
    key = (url, str(home), int(pub["publication_id"]), champion)
    if key in _CACHE:
        return _CACHE[key]
    snap = Path(home).expanduser().resolve() / "runs" / pub["run_id"] / "snapshot"
    if not (snap / "item_features.parquet").exists():
        raise PipelineError(f"the live run {pub['run_id']}'s snapshot is not under {snap}",
                            "RERANK_HOME must be the home the nightly run wrote to")
    uri, version = _champion_uri(url, champion)
    art = load_artefacts(snap, uri, fold_in=True, model_version=version,
                         neighbours=_neighbours(url, snap, int(pub["publication_id"])))
    live = LiveRun(publication_id=int(pub["publication_id"]), run_id=str(pub["run_id"]),
                   generated_at=pub["generated_at"], art=art)
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
