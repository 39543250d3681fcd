"""The nightly run's stages, each one plain function with explicit arguments (the DAG calls them one per
task; ``rerank run nightly`` calls them in order through :func:`run_nightly`).

Big results stay in RERANK_HOME/runs/<run_id>/ (Parquet) and in Postgres; stage functions return small
dicts of counts and keys, which is all that crosses XCom.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import runs
from pipeline.dask_client import dask_client
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.files import write_parquet, write_text
from pipeline.settings import Settings, get_settings, use_settings

log = logging.getLogger(__name__)

STAGES = ("validate", "extract", "item_features", "user_features", "cf_build", "train_ranker",
          "evaluate_gate", "score_users", "quality_gate", "publish", "report")


def _stage(name: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Time a stage and keep its figures in RERANK_HOME/runs/<run_id>/stages/, whoever calls it (the DAG
    or run_nightly); the report stage copies them into recsys.runs."""

    def wrap(fn: Callable[..., dict]) -> Callable[..., dict]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: object, **kwargs: object) -> dict:
            bound = sig.bind(*args, **kwargs)
            home = bound.arguments.get("home") or str(get_settings().home_path)
            client = bound.arguments.get("client")
            before = _removals(client)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if client is not None:  # a client shared by stages (rerank run nightly, an external cluster)
                lost = _removals(client) - before
                if lost:  # a nanny restarted a worker: most often its memory limit (RERANK_WORKER_MEMORY)
                    out = {**out, "workers_lost": len(lost)}
                    log.warning("stage %s: %d Dask worker(s) lost and replaced during the stage; check "
                                "RERANK_WORKER_MEMORY against the workers' peak", name, len(lost))
                client.run(release_worker_caches)  # type: ignore[attr-defined]
            # One file per stage: the DAG runs some stages in parallel, so a shared file would race.
            folder = _dir(str(home), str(bound.arguments["run_id"])) / "stages"
            folder.mkdir(exist_ok=True)
            write_text(folder / f"{name}.json",
                       json.dumps({"seconds": round(time.perf_counter() - t0, 3), **out}, default=str))
            return out

        return run

    return wrap


def _removals(client: object | None) -> set[tuple[float, str]]:
    """The scheduler's log of removed workers (time, address): each restart counts, the same worker's too."""
    if client is None:
        return set()

    # Read on the scheduler, only these plain pairs back: the topic's other events may hold objects the
    # comm cannot serialise (a WorkerState), and asking for the whole topic broke the connection. A nested
    # function travels by value, so the scheduler needs no copy of this package.
    def removed(dask_scheduler) -> list[tuple[float, str]]:  # noqa: ANN001
        return [(float(ts), str(msg.get("worker", ""))) for ts, msg in dask_scheduler.get_events("all")
                if isinstance(msg, dict) and msg.get("action") == "remove-worker"]

    return {tuple(e) for e in client.run_on_scheduler(removed)}  # type: ignore[attr-defined]


def release_worker_caches() -> None:
    """Run on each worker after a stage: drop the run's cached artefacts (scoring's catalogue, factors and
    model; the gate's item vectors) and hand the freed memory back, so the next stage starts from a bare
    worker as it does under Airflow (a cluster per task)."""
    import contextlib
    import ctypes
    import gc

    from pipeline.publish.gate import release_caches as release_gate_caches
    from pipeline.recommend import release_caches

    release_caches()
    release_gate_caches()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _dir(home: str | Path, run_id: str) -> Path:
    return runs.run_dir(home, run_id)


def _params(home: str | Path, run_id: str) -> dict:
    p = _dir(home, run_id) / "params.json"
    return json.loads(p.read_text()) if p.exists() else {}


def check_config(s: Settings) -> None:
    """Refuse bad re-rank, A/B variant and output gate settings before a run starts: the stages that use them
    (score_users on Dask workers, quality_gate) come after hours of extraction and training."""
    from pipeline.publish.gate import GateThresholds
    from pipeline.rerank.config import RerankConfig, parse_variants

    try:
        RerankConfig().with_overrides(s.rerank)
    except TypeError as exc:  # a value of the wrong type (e.g. a string for a share)
        raise ConfigError(f"invalid RERANK_RERANK: {exc}", "pipeline/rerank/config.py RerankConfig") from None
    parse_variants(s.variants)
    GateThresholds.from_dict(s.gate)


def begin(url: str, home: str, as_of: datetime, *, dag: str = "rerank_nightly", params: dict | None = None) -> str:
    """Record the run in recsys.runs and its params under RERANK_HOME; return the run_id."""
    from pipeline.db.migrate import require_schema

    check_config(get_settings())
    require_schema(url)
    run_id = runs.start_run(url, dag=dag, as_of=as_of, params=params)
    shutil.rmtree(_dir(home, run_id) / "stages", ignore_errors=True)  # a re-run starts its figures afresh
    write_text(_dir(home, run_id) / "params.json", json.dumps(params or {}, default=str, sort_keys=True))
    return run_id


@_stage("validate")
def validate(url: str, run_id: str, as_of: datetime, max_bad_share: float | None = None,
             home: str | None = None) -> dict:
    """Great Expectations suites + row-level quarantine of the source tables; Data Docs under the run's reports."""
    from pipeline.validate import validate_source

    s = get_settings()
    share = s.max_bad_share if max_bad_share is None else max_bad_share
    return validate_source(url, run_id, as_of, max_bad_share=share, home=home or str(s.home_path),
                           ts_floor=s.ts_floor, full_every_days=s.validate_full_every_days,
                           retention_days=s.quarantine_retention_days)


@contextmanager
def _client(client: object | None, dask_address: str | None) -> Iterator[object]:
    """The caller's client when given (one cluster for a whole run), else one for this stage. A stage's own
    client on an external cluster leaves its workers bare at the end, as a shared client does after each stage
    (:func:`release_worker_caches`); a LocalCluster closes with the stage."""
    if client is not None:
        yield client
        return
    with dask_client(address=dask_address) as own:
        yield own
        if dask_address or get_settings().dask_address:
            own.run(release_worker_caches)  # type: ignore[attr-defined]


@_stage("extract")
def extract(url: str, home: str, run_id: str, as_of: datetime, dask_address: str | None = None,
            client: object | None = None) -> dict:
    from pipeline.extract import extract_snapshot
    from pipeline.extract.impressions import extract_impressions

    with _client(client, dask_address) as c:
        out = extract_snapshot(url, _dir(home, run_id) / "snapshot", as_of, c, ts_floor=get_settings().ts_floor)
    check_shop(out, as_of)
    out["impressions"] = extract_impressions(url, _dir(home, run_id) / "snapshot", as_of,
                                             days=get_settings().rank_windows + 2)
    return out


def check_shop(extracted: dict, as_of: datetime) -> None:
    """Refuse a snapshot no list can be made from (an empty shop, events with no catalogue, an ``as_of``
    before the catalogue existed) in one line, before features and training fail on it. A shop with items
    and users but no events yet is fine: its first lists are the popular ones."""
    need = "load the shop first (`rerank generate`, `rerank import`) or pick a later --as-of"
    if not extracted.get("items"):
        raise InputDataError(f"the snapshot has no items created before as_of {as_of.isoformat()} (shop.items is "
                             "empty, or every item was quarantined or is newer)", need)
    if not extracted.get("users"):
        raise InputDataError(f"the snapshot has no users created before as_of {as_of.isoformat()}", need)


@_stage("item_features")
def item_features(home: str, run_id: str, as_of: datetime, dask_address: str | None = None,
                  client: object | None = None, url: str | None = None) -> dict:
    """Item statistics on Dask, text (+ image) embeddings; recsys.item_features when ``url`` is given."""
    from pipeline.features import build_item_embeddings, build_item_features, write_feature_tables

    s = get_settings()
    snap = _dir(home, run_id) / "snapshot"
    cache = s.home_path / "cache" / "embeddings"  # by text / picture hash: a night embeds new items only
    with _client(client, dask_address) as c:
        feats = build_item_features(snap, as_of, c, weights=s.event_weights, half_life_days=s.half_life_days,
                                    cache_dir=cache, device=s.device)
        emb = build_item_embeddings(snap, method=s.embedding_method, client=c, cache_dir=cache)
    from pipeline.recall.content import build_content_neighbours

    n_similar = build_content_neighbours(snap)
    if url:
        write_feature_tables(url, run_id, snap, which=("items",))
    img = feats.attrs.get("images", {})
    return {"items": len(feats), "items_with_activity": int((feats["events"] > 0).sum()),
            "items_with_image": int(feats["has_image"].sum()) if "has_image" in feats else 0,
            "embedding_method": emb.get("model"), "embedding_fallback": emb.get("fallback"),
            "embedding_dim": emb.get("dim"), "texts_embedded": emb.get("embedded"),
            "texts_cached": emb.get("cached"), "image_model": img.get("image_model"),
            "items_with_image_vector": img.get("items_with_image", 0),
            "items_without_image": img.get("items_without_image"), "images_unreadable": img.get("images_unreadable"),
            "images_embedded": img.get("images_embedded"), "images_cached": img.get("images_cached"),
            "content_text_weight": (emb.get("fusion") or {}).get("text_weight"), "content_neighbour_rows": n_similar}


@_stage("user_features")
def user_features(home: str, run_id: str, as_of: datetime, dask_address: str | None = None,
                  client: object | None = None, url: str | None = None) -> dict:
    """RFM, affinities, search terms and the last-N behaviour sequence per user (Dask, by user-id range)."""
    from pipeline.features import build_user_features, write_feature_tables

    s = get_settings()
    snap = _dir(home, run_id) / "snapshot"
    with _client(client, dask_address) as c:
        out = build_user_features(snap, as_of, c, weights=s.event_weights, half_life_days=s.half_life_days,
                                  seq_len=50, shard_users=s.shard_users, chunk_rows=s.chunk_rows)
    if url:
        write_feature_tables(url, run_id, snap, which=("users",))
    return {"users": out["users"], "users_without_events": out["users_without_events"], "parts": out["parts"],
            "events_sharded": out["events_sharded"]}


@_stage("cf_build")
def cf_build(home: str, run_id: str, as_of: datetime, k: int = 20, dask_address: str | None = None,
             client: object | None = None) -> dict:
    """Item-item neighbours (blocked on Dask), the seq source's followers and ALS factors for the run."""
    from pipeline.recall.stage import build_recall_models

    s = get_settings()
    with _client(client, dask_address) as c:
        return build_recall_models(_dir(home, run_id) / "snapshot", as_of, c, weights=s.event_weights,
                                   half_life_days=s.half_life_days, k=k, seed=s.seed, weighting=s.als_weighting,
                                   factors=s.als_factors,
                                   decay_from=s.decay_from, seq_k=s.seq_neighbours)


@_stage("train_ranker")
def train_ranker(url: str, home: str, run_id: str, as_of: datetime, retrain: bool = True) -> dict:
    """Train a candidate ranker on point-in-time windows of the snapshot and register it (GPU when present)."""
    from pipeline.rank.model import RankerConfig
    from pipeline.rank.stage import train_ranker as train

    s = get_settings()
    cfg = RankerConfig(seed=s.seed, max_epochs=s.rank_max_epochs, event_weights=dict(s.event_weights),
                       half_life_days=dict(s.half_life_days))
    return train(url, home, run_id, as_of, retrain=retrain, device=s.device, seed=s.seed,
                 n_windows=s.rank_windows, config=cfg)


@_stage("evaluate_gate")
def evaluate_gate(url: str, home: str, run_id: str, as_of: datetime, tolerance: float | None = None) -> dict:
    """Promote the candidate only if it is not worse than recall-only ordering nor than the champion on the same
    holdout; record which model this run scores with (RERANK_HOME/runs/<run_id>/model.json) so every shard uses
    the same one."""
    from pipeline.rank.registry import champion
    from pipeline.rank.stage import evaluate_gate as gate

    s = get_settings()
    tol = s.gate_tolerance if tolerance is None else tolerance
    out = gate(url, home, run_id, as_of, tolerance=tol, recall_margin=s.gate_recall_margin,
               confidence=s.gate_confidence)
    row = champion(url)
    chosen = {"model_version": row["model_version"], "artifact_uri": row["artifact_uri"]} if row else {
        "model_version": "recall-only", "artifact_uri": None}
    # the priors the run scores with: a model's own, which it was trained with (load_artefacts reads them from its
    # sidecar); recall-only ordering, those this run's train_ranker chose
    trained = _dir(home, run_id) / "ranker.json"
    recall = (json.loads(trained.read_text()).get("recall") or {}) if trained.exists() else {}
    own = ((row or {}).get("metrics") or {}).get("recall_priors")
    chosen["recall_priors"] = dict(own if own is not None else recall.get("priors", s.recall_priors))
    write_text(_dir(home, run_id) / runs.RUN_MODEL_FILE, json.dumps(chosen))
    return {**out, "scoring_model": chosen["model_version"]}


def _score_shard(k: int, users: np.ndarray, snap: str, out_dir: str, as_of: datetime, top_n: int,
                 n_candidates: int, recent_days: int, weights: dict, half_life: dict, artifact_uri: str | None = None,
                 rerank: dict | None = None, variants: dict | None = None, salt: str = "rerank-ab",
                 rules: pd.DataFrame | None = None, stamp: dict | None = None, decay_from: str = "as_of",
                 priors: dict | None = None) -> dict:
    """One Dask task: recall + score + re-rank shard ``k`` (``users``, read from its own events folder) and
    write its lists to ``out_dir/part-k.parquet``; only the shard's figures come back."""
    from pipeline.extract.shards import read_shard_events

    events = read_shard_events(snap, k)
    lists, exhausted = recommend_shard(users, events, snap, as_of, top_n=top_n, n_candidates=n_candidates,
                                       recent_days=recent_days, weights=weights, half_life=half_life,
                                       artifact_uri=artifact_uri, rerank=rerank, variants=variants, salt=salt,
                                       rules=rules, decay_from=decay_from, priors=priors)
    if "variant" not in lists:
        lists["variant"] = "control"
    for col, value in (stamp or {}).items():
        lists[col] = value
    lists = lists.sort_values(["user_id", "rank"]).reset_index(drop=True)
    out = Path(out_dir)
    write_parquet(lists, out / "recs" / f"part-{k:05d}.parquet")
    write_parquet(pd.DataFrame({"user_id": np.asarray(exhausted, dtype="int64")}),
                  out / "exhausted" / f"part-{k:05d}.parquet")
    return {"rows": len(lists), "users": int(lists["user_id"].nunique()) if len(lists) else 0,
            "exhausted": len(exhausted),
            "sources": lists["source"].value_counts().to_dict() if len(lists) else {}}


def recommend_shard(users: np.ndarray, events: pd.DataFrame, snap: str | Path, as_of: datetime, *, top_n: int,
                    n_candidates: int, recent_days: int, weights: dict, half_life: dict,
                    artifact_uri: str | None = None, rerank: dict | None = None, variants: dict | None = None,
                    salt: str = "rerank-ab", rules: pd.DataFrame | None = None, decay_from: str = "as_of",
                    priors: dict | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`pipeline.recommend.recommend` for ``users`` from their ``events`` and the run's artefacts under
    ``snap`` (loaded once per worker); returns (their final lists with reasons, the users left without one
    because nothing is eligible). The ranker reads these users' rows of the run's user_features parts."""
    from pipeline.features.users import read_user_features_of
    from pipeline.rank.features import PROFILE_COLUMNS
    from pipeline.recommend import RecommendConfig, load_artefacts, recommend
    from pipeline.rerank import RerankConfig

    cfg = RecommendConfig(top_n=top_n, n_candidates=n_candidates, recent_days=recent_days, weights=weights,
                          half_life_days=half_life, decay_from=decay_from, priors=dict(priors or {}))
    art = load_artefacts(snap, artifact_uri)
    feats = read_user_features_of(snap, users, list(PROFILE_COLUMNS)) if art.ranker is not None else None
    return recommend(users, events, art, as_of, cfg, rerank=RerankConfig(**(rerank or {})), rules=rules,
                     variants=variants, variant_salt=salt, user_feats=feats)


@_stage("score_users")
def score_users(home: str, run_id: str, as_of: datetime, *, top_n: int, n_candidates: int,
                model_version: str = "recall-only", user_ids: Sequence[int] | None = None,
                dask_address: str | None = None, shard_size: int | None = None, client: object | None = None,
                url: str | None = None) -> dict:
    """Recall + score + re-rank every user (or ``user_ids``) in shards of at most ``shard_size`` users
    (RERANK_SHARD_USERS): each Dask task reads only its shard's events and writes its own Parquet part under
    ``runs/<run_id>/recs/``; nothing gathers the lists. With ``url``, the merchandisers' rules and repurchase
    windows are read from recsys.rules / recsys.repurchase_windows."""
    from pipeline.extract.shards import plan_shards, shard_events, split_users
    from pipeline.rerank import load_repurchase_windows, load_rules

    s = get_settings()
    rules = load_rules(url, as_of) if url else None
    rerank = dict(s.rerank)
    if url:
        rerank = {"repurchase_days": load_repurchase_windows(url), **rerank}
    d = _dir(home, run_id)
    snap = d / "snapshot"
    users = pd.read_parquet(snap / "users.parquet", columns=["user_id"])["user_id"].to_numpy()
    if user_ids:
        users = np.intersect1d(users, np.asarray(list(user_ids), dtype="int64"))
    chosen_path = d / runs.RUN_MODEL_FILE
    chosen = json.loads(chosen_path.read_text()) if chosen_path.exists() else {}
    model_version = chosen.get("model_version") or model_version
    bounds = plan_shards(users, shard_size or s.shard_users)
    stamp = {"model_version": model_version, "run_id": run_id, "generated_at": pd.Timestamp(as_of)}
    for sub in ("recs", "exhausted"):  # a re-run starts its parts afresh
        shutil.rmtree(d / sub, ignore_errors=True)
        (d / sub).mkdir(parents=True)
    (d / "recs.parquet").unlink(missing_ok=True)  # the single file of runs before parts
    with _client(client, dask_address) as client:
        layout = shard_events(snap, bounds, client, chunk_rows=s.chunk_rows)
        ks = list(range(len(bounds)))
        futures = client.map(_score_shard, ks, split_users(users, bounds), snap=str(snap),
                             out_dir=str(d), as_of=as_of, top_n=top_n, n_candidates=n_candidates,
                             recent_days=s.recent_days, weights=s.event_weights, half_life=s.half_life_days,
                             artifact_uri=chosen.get("artifact_uri"), rerank=rerank, variants=dict(s.variants),
                             salt=s.variant_salt, rules=rules, stamp=stamp, decay_from=s.decay_from,
                             priors=dict(s.recall_priors), pure=False)
        done = client.gather(futures)  # the shards' figures only
    sources: dict[str, int] = {}
    for fig in done:
        for name, n in fig["sources"].items():
            sources[name] = sources.get(name, 0) + int(n)
    return {"users": sum(f["users"] for f in done), "rows": sum(f["rows"] for f in done), "shards": len(done),
            "shard_users": int(shard_size or s.shard_users), "events_sharded": layout["rows"],
            "events_layout_reused": bool(layout.get("reused")),
            "exhausted_users": sum(f["exhausted"] for f in done), "sources": sources}


@_stage("quality_gate")
def quality_gate(home: str, run_id: str, thresholds: dict | None = None, url: str | None = None,
                 top_n: int | None = None, client: object | None = None) -> dict:
    """Check the run's lists (settings' gate thresholds unless given); with ``url``, churn against the live run.
    ``top_n``: the list length asked for (default: the run's recorded one) for the long / short list checks.

    The lists are reduced part by part (pipeline.publish.parts): on the Dask ``client``'s workers when given,
    else in a loop here; the live run's rows are read per part's users, never as one table.
    """
    from pipeline.publish.gate import check_parts
    from pipeline.publish.parts import rec_parts
    from pipeline.publish.swap import LiveRows

    d = _dir(home, run_id)
    parts = rec_parts(d)
    items = pd.read_parquet(d / "snapshot" / "items.parquet")
    users = pd.read_parquet(d / "snapshot" / "users.parquet", columns=["user_id"])["user_id"]
    params = _params(home, run_id)
    subset = params.get("user_ids")
    if subset:
        users = users[users.isin(subset)]
    live = LiveRows.of_live(url) if url else None
    exhausted = _exhausted(d)
    return check_parts(parts, users=users, items=items, exhausted=exhausted,
                       thresholds=thresholds if thresholds is not None else dict(get_settings().gate),
                       live=live, item_embeddings=d / "snapshot" / "item_embeddings.parquet",
                       top_n=top_n or params.get("top_n"), nothing_live=url is not None and live is None,
                       client=client)


def _exhausted(run_dir: Path) -> pd.Series | None:
    """Users the scoring left without a list because nothing is eligible for them (few: bought everything)."""
    parts = sorted((run_dir / "exhausted").glob("part-*.parquet"))
    if parts:
        return pd.concat([pd.read_parquet(p)["user_id"] for p in parts], ignore_index=True)
    legacy = run_dir / "exhausted.parquet"
    return pd.read_parquet(legacy)["user_id"] if legacy.exists() else None


@_stage("publish")
def publish(url: str, home: str, run_id: str, as_of: datetime, *, keep: int = 3, dry_run: bool = False) -> dict:
    """Swap the read views to this run's lists, streamed part by part into COPY (RERANK_PUBLISH_CHUNK_ROWS
    rows at a time); with a user subset, other users keep their live rows (copied inside Postgres). The
    publication is stamped with the run's ``as_of`` (the lists' ``generated_at``)."""
    from pipeline.publish import publish_run
    from pipeline.publish.parts import rec_parts, rows_in_parts

    d = _dir(home, run_id)
    parts = rec_parts(d)
    if dry_run:
        return {"published": False, "dry_run": True, "rows": rows_in_parts(parts)}
    subset = _params(home, run_id).get("user_ids")
    from pipeline.recall.content import similar_items_table

    nb = similar_items_table(d / "snapshot")  # behavioural neighbours, then fused text+image ones
    return publish_run(url, run_id, parts, nb, generated_at=as_of, keep=keep,
                       chunk_rows=get_settings().publish_chunk_rows, keep_other_users=bool(subset))


def report(url: str, home: str, run_id: str) -> dict:
    """Copy the stage figures into recsys.runs and write the run's summary to RERANK_HOME/reports/<run_id>/;
    the HTML report beside the stage files (runs/<run_id>/report.html, linked from recsys.runs.report_uri)."""
    from pipeline.reporting.run_report import write_run_report

    for path in sorted((_dir(home, run_id) / "stages").glob("*.json")):
        runs.record_stage(url, run_id, path.stem, json.loads(path.read_text()))
    stats = runs.run_stats(url, run_id)
    out = Path(home).expanduser().resolve() / "reports" / run_id
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "run.json", json.dumps(stats, indent=2, default=str))
    return {"report": str(out / "run.json"), **write_run_report(url, home, run_id)}


def finish(url: str, run_id: str, status: str = "success", error: str | None = None) -> None:
    runs.finish_run(url, run_id, status, error)


def run_nightly(settings: Settings | None = None, *, as_of: datetime, retrain: bool = True,
                only_stage: str | None = None, user_ids: Sequence[int] | None = None, top_n: int | None = None,
                dry_run: bool = False, on_stage: Callable[[str, dict, float], None] | None = None) -> dict:
    """All stages in order without Airflow (``rerank run nightly``); returns per-stage results."""
    from pipeline.db.engine import database_url

    s = settings or get_settings()
    # Refuse bad input before anything is recorded (a typo'd stage would leave a run 'running' forever).
    if only_stage is not None and only_stage not in STAGES:
        raise PipelineError(f"unknown stage {only_stage!r}", f"one of {', '.join(STAGES)}")
    if top_n is not None and not 1 <= top_n <= 1000:
        raise ConfigError(f"top_n must be between 1 and 1000, got {top_n}", "--top-n / RERANK_TOP_N")
    url, home = database_url(s), str(s.home_path)
    with use_settings(s):
        check_config(s)
        existing = runs.run_stats(url, runs.make_run_id("rerank_nightly", as_of)) if only_stage else {}
        if existing:
            # One stage of an existing run: keep its params and figures (re-beginning would reset them), and
            # run with its user subset and list length, which quality_gate and publish read from its params.
            run_id = runs.make_run_id("rerank_nightly", as_of)
            user_ids, top_n = _same_params(run_id, existing.get("params") or {}, user_ids, top_n, s.top_n)
        else:
            top_n = top_n or s.top_n
            params = {"as_of": as_of.isoformat(), "retrain": retrain, "user_ids": list(user_ids or []),
                      "top_n": top_n, "dry_run": dry_run}
            run_id = begin(url, home, as_of, params=params)
        with dask_client(s) as client:
            return _run_steps(s, url, home, run_id, as_of, client, retrain=retrain, only_stage=only_stage,
                              user_ids=user_ids, top_n=top_n, dry_run=dry_run, on_stage=on_stage)


def _same_params(run_id: str, recorded: dict, user_ids: Sequence[int] | None, top_n: int | None,
                 default_top_n: int) -> tuple[list[int] | None, int]:
    """The recorded user subset and list length of ``run_id``; given ones must agree with them."""
    had_users = sorted(int(u) for u in recorded.get("user_ids") or [])
    had_top_n = int(recorded.get("top_n") or default_top_n)
    if user_ids and sorted(int(u) for u in user_ids) != had_users:
        raise ConfigError(f"run {run_id} was begun with user_ids {had_users or 'all'}, not {list(user_ids)}",
                          "re-run the whole night (without --stage) to change the user subset")
    if top_n is not None and top_n != had_top_n:
        raise ConfigError(f"run {run_id} was begun with top_n {had_top_n}, not {top_n}",
                          "re-run the whole night (without --stage) to change the list length")
    return (had_users or None), had_top_n


def _run_steps(s: Settings, url: str, home: str, run_id: str, as_of: datetime, client: object, *, retrain: bool,
               only_stage: str | None, user_ids: Sequence[int] | None, top_n: int, dry_run: bool,
               on_stage: Callable[[str, dict, float], None] | None) -> dict:
    steps: dict[str, Callable[[], dict]] = {
        "validate": lambda: validate(url, run_id, as_of, home=home),
        "extract": lambda: extract(url, home, run_id, as_of, client=client),
        "item_features": lambda: item_features(home, run_id, as_of, client=client, url=url),
        "user_features": lambda: user_features(home, run_id, as_of, client=client, url=url),
        "cf_build": lambda: cf_build(home, run_id, as_of, client=client),
        "train_ranker": lambda: train_ranker(url, home, run_id, as_of, retrain),
        "evaluate_gate": lambda: evaluate_gate(url, home, run_id, as_of),
        "score_users": lambda: score_users(home, run_id, as_of, top_n=top_n, n_candidates=s.candidates,
                                           user_ids=user_ids, client=client, url=url),
        "quality_gate": lambda: quality_gate(home, run_id, url=url, top_n=top_n, client=client),
        "publish": lambda: publish(url, home, run_id, as_of, keep=s.keep_runs, dry_run=dry_run),
        "report": lambda: report(url, home, run_id),
    }
    selected = [only_stage] if only_stage else list(STAGES)
    unknown = [x for x in selected if x not in steps]
    if unknown:
        raise PipelineError(f"unknown stage {unknown[0]!r}", f"one of {', '.join(STAGES)}")
    results: dict[str, dict] = {"run_id": run_id}  # type: ignore[dict-item]
    for name in selected:
        t0 = time.perf_counter()
        try:
            out = steps[name]()
        except FileNotFoundError as exc:
            if not only_stage:
                finish(url, run_id, "failed", f"{name}: {exc}")
                raise
            # One stage run before the stages it reads from: say so in one line, not a traceback.
            error = InputDataError(f"stage {name} of run {run_id} found no input {exc.filename or exc}",
                                   "run the earlier stages of this run first (rerank run nightly --as-of DATE)")
            finish(url, run_id, "failed", str(error))
            raise error from None
        except Exception as exc:
            finish(url, run_id, "failed", f"{name}: {exc}")
            raise
        secs = time.perf_counter() - t0
        results[name] = out
        if on_stage:
            on_stage(name, out, secs)
    if not only_stage or only_stage == "report":
        finish(url, run_id, "success")
    return results
