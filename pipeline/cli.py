"""``rerank``: one subcommand per stage (the exact forms in ARCHITECTURE.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import ConfigError, PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ecom-rerank: Postgres in, Postgres out.")
db_app = typer.Typer(no_args_is_help=True, help="The database: embedded server and migrations.")
run_app = typer.Typer(no_args_is_help=True, help="Run a workflow without Airflow.")
publish_app = typer.Typer(no_args_is_help=True, help="Publication of the read views.")
models_app = typer.Typer(no_args_is_help=True, help="The ranker registry (recsys.models).")
impressions_app = typer.Typer(no_args_is_help=True, help="What users were shown (shop.impressions).")
ab_app = typer.Typer(no_args_is_help=True, help="A/B readout of the arms (recsys.ab_daily).")
app.add_typer(db_app, name="db")
app.add_typer(run_app, name="run")
app.add_typer(publish_app, name="publish")
app.add_typer(models_app, name="models")
app.add_typer(impressions_app, name="impressions")
app.add_typer(ab_app, name="ab")

out = Console()
err = Console(stderr=True)

# Closed choices, spelt out here so that the CLI starts without importing the stages; tests/unit/test_cli_choices
# checks them against the library's own lists (TIERS, FORMATS, PROTOCOLS, STAGES).
Tier = StrEnum("Tier", [(t, t) for t in ("S", "M", "L")])
Format = StrEnum("Format", [(f, f) for f in ("movielens", "taobao", "amazon-s3rec", "diginetica", "csv", "parquet")])
Protocol = StrEnum("Protocol", [(p, p) for p in ("msr-stratified", "leave-one-out", "temporal")])
Stage = StrEnum("Stage", [(s, s) for s in ("validate", "extract", "item_features", "user_features", "cf_build",
                                           "train_ranker", "evaluate_gate", "score_users", "quality_gate", "publish",
                                           "report")])


@contextmanager
def _progress(what: str, total: int | None = None) -> Iterator[Callable[[str | None], None]]:
    """A Rich progress line on stderr while a long command runs (spinner, elapsed time; a bar when ``total`` is
    known), yielding ``step(description)`` that advances it by one. Only when stderr is a terminal: scripts,
    tests and CI see exactly the output they saw before (a no-op ``step``)."""
    if not sys.stderr.isatty():
        yield lambda description=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    # stdout lines go above the bar only when stdout shares the terminal; piped stdout is left untouched
    # a Console of its own: one made at import time fixed "interactive" from the stderr of that moment
    with Progress(*columns, console=Console(stderr=True), transient=True, redirect_stdout=sys.stdout.isatty(),
                  redirect_stderr=False) as bar:
        task = bar.add_task(what, total=total)

        def step(description: str | None = None) -> None:
            bar.update(task, advance=1, description=description or what)

        yield step


def _settings():
    from pipeline.settings import get_settings

    return get_settings()


def _url(start: bool = True) -> str:
    from pipeline.db.engine import database_url

    return database_url(_settings(), start=start)


def _embedded():
    from pipeline.db.embedded import EmbeddedPostgres

    s = _settings()
    if s.database_url:
        raise ConfigError("RERANK_DATABASE_URL is set, so there is no embedded server to manage",
                          "unset RERANK_DATABASE_URL to use the embedded PostgreSQL")
    return EmbeddedPostgres(s.home_path, s.pg_port)


# --- db -----------------------------------------------------------------------------------------------
@db_app.command("up")
def db_up() -> None:
    """Start the embedded PostgreSQL (initialised on first use) and print its URL."""
    pg = _embedded()
    url = pg.up()
    out.print(f"embedded PostgreSQL running, data in {pg.pgdata}")
    print(url)


@db_app.command("down")
def db_down() -> None:
    """Stop the embedded PostgreSQL."""
    stopped = _embedded().down()
    print("stopped" if stopped else "not running")


@db_app.command("status")
def db_status() -> None:
    """Say whether the database is reachable and at which schema revision."""
    s = _settings()
    if s.database_url:
        from pipeline.db import migrate

        print(json.dumps({"url": _redacted(s.database_url), "revision": migrate.current(_url())}))
        return
    st = _embedded().status()
    if st["running"]:
        from pipeline.db import migrate

        st["revision"] = migrate.current(st["url"])
        st["url"] = _redacted(st["url"])
    print(json.dumps(st))


class LoginName(StrEnum):
    """The logins of ``rerank db migrate --create-logins``."""

    owner = "owner"
    pipeline = "pipeline"
    app = "app"


@db_app.command("url")
def db_url(
    login: LoginName = typer.Option(LoginName.owner, "--login", help="whose URL: the owner (migrations), or "
                                    "the pipeline or app login made by `db migrate --create-logins`"),
) -> None:
    """Print a libpq URI on the last line (starts the embedded server if needed)."""
    url = _url()
    if login is not LoginName.owner:
        from pipeline.db.embedded import read_secret
        from pipeline.db.logins import APP_LOGIN, PIPELINE_LOGIN, login_url, secret_path

        name = PIPELINE_LOGIN if login is LoginName.pipeline else APP_LOGIN
        given = _settings().pipeline_db_password if login is LoginName.pipeline else _settings().app_db_password
        password = given.get_secret_value() if given else read_secret(secret_path(_settings().home_path, name))
        if password is None:
            raise ConfigError(f"no password for the {login.value} login", "run `rerank db migrate --create-logins`")
        url = login_url(url, name, password)
    print(url)


@db_app.command("migrate")
def db_migrate(
    create_logins: bool = typer.Option(False, "--create-logins", help="also create the pipeline login "
                                       "(rerank_pipeline in rerank_writer) and the app login (rerank_app in "
                                       "rerank_reader); passwords from RERANK_PIPELINE_DB_PASSWORD / "
                                       "RERANK_APP_DB_PASSWORD, else kept 0600 under RERANK_HOME/secrets/"),
) -> None:
    """Apply the Alembic migrations under sql/ (as the owner)."""
    from pipeline.db import migrate

    url = _url()
    rev = migrate.upgrade(url)
    print(f"database at revision {rev}")
    if create_logins:
        from pipeline.db.logins import APP_LOGIN, PIPELINE_LOGIN
        from pipeline.db.logins import create_logins as make

        s = _settings()
        given = {PIPELINE_LOGIN: s.pipeline_db_password, APP_LOGIN: s.app_db_password}
        for login in make(url, s.home_path, {k: v.get_secret_value() if v else None for k, v in given.items()}):
            where = f"password in {login.secret_file}" if login.secret_file else "password from the settings"
            print(f"login {login.name} (member of {login.member_of}): {where}")


def _redacted(url: str) -> str:
    from pipeline.db.engine import _redact

    return _redact(url)


# --- data ---------------------------------------------------------------------------------------------
@app.command()
def generate(
    tier: Tier | None = typer.Option(None, case_sensitive=False,
                                     help="S, M or L (10k/2k/500k, 100k/20k/5M, 1M/100k/50M)"),
    users: int | None = typer.Option(None, help="Number of users"),
    items: int | None = typer.Option(None, help="Number of items"),
    days: int = typer.Option(30, help="Days of history"),
    seed: int = typer.Option(42, help="Random seed"),
    events_per_user: float | None = typer.Option(None, help="Mean events per user (default: tier ratio)"),
    impression_days: int = typer.Option(0, "--impression-days", min=0,
                                        help="Also log a home placement in shop.impressions over the last N days, "
                                        "with position-biased clicks (0: none)"),
    images: bool = typer.Option(True, "--images/--no-images",
                                help="Draw a small picture for every item under RERANK_HOME/images"),
) -> None:
    """Generate a synthetic shop into shop.* (replacing what is there), with a picture per item."""
    from pipeline.datagen import generate_shop, tier_sizes

    kwargs = {}
    if tier:
        users_t, items_t, events_t = tier_sizes(tier)
        users, items = users or users_t, items or items_t
        kwargs["events_per_user"] = events_per_user or events_t / users_t
    elif events_per_user:
        kwargs["events_per_user"] = events_per_user
    if users is None or items is None:
        raise ConfigError("give --tier or both --users and --items", "rerank generate --help")
    for name, v in {"--users": users, "--items": items, "--days": days}.items():
        if v <= 0:
            raise ConfigError(f"{name} must be positive, got {v}")
    if impression_days:
        kwargs["impression_days"] = impression_days
    from pipeline.db.migrate import require_schema

    url = _url()
    require_schema(url)
    if images:
        from pipeline.settings import get_settings

        kwargs["images_dir"] = str(get_settings().home_path / "images" / f"shop-{seed}")
    with _progress(f"generating {users} users, {items} items, {days} days"):
        stats = generate_shop(url, users=users, items=items, days=days, seed=seed, **kwargs)
    shown = f", {stats.impressions} impressions" if stats.impressions else ""
    print(f"generated shop: {stats.users} users, {stats.items} items, {stats.events} events{shown} "
          f"(build {stats.build_seconds:.1f}s, load {stats.load_seconds:.1f}s)")


@app.command("import")
def import_(
    fmt: Format = typer.Argument(..., metavar="FORMAT", help="movielens|taobao|amazon-s3rec|diginetica|csv|parquet"),
    path: Path = typer.Argument(..., help="File or folder of the dataset"),
    mapping: str | None = typer.Option(None, help='csv/parquet column mapping as JSON, e.g. {"user_id": "uid"}'),
    replace: bool = typer.Option(False, "--replace", help="Replace a non-empty shop without asking (needed "
                                 "without a terminal, e.g. in CI)"),
) -> None:
    """Import a dataset into shop.*, replacing what is there (asked first); invalid rows go to recsys.quarantine.
    Last line: both counts."""
    from pipeline.db.migrate import require_schema
    from pipeline.ingest import import_dataset

    url = _url()
    require_schema(url)
    if not replace:
        _confirm_replace(url, path)
    try:
        mapping_d = json.loads(mapping) if mapping else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--mapping is not valid JSON: {exc}") from None
    with _progress(f"importing {fmt.value} from {path}"):
        result = import_dataset(url, fmt.value, path, mapping=mapping_d)
    print(result.summary_line())


@impressions_app.command("import")
def impressions_import(
    path: Path = typer.Argument(..., help="CSV (with a header) or Parquet file of impressions"),
    mapping: str | None = typer.Option(None, help='column mapping as JSON, e.g. {"user_id": "uid", "rank": "pos"}'),
    append: bool = typer.Option(False, "--append", help="Add to shop.impressions instead of replacing it"),
) -> None:
    """Load impressions (user_id, item_id, rank, ts; placement, variant, run_id) into shop.impressions; invalid
    rows go to recsys.quarantine. Last line: both counts."""
    from pipeline.db.migrate import require_schema
    from pipeline.ingest.impressions import import_impressions

    url = _url()
    require_schema(url)
    try:
        mapping_d = json.loads(mapping) if mapping else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--mapping is not valid JSON: {exc}") from None
    print(import_impressions(url, path, mapping=mapping_d, append=append).summary_line())


@ab_app.command("report")
def ab_report(
    since: str = typer.Option(..., "--since", help="First day of the period (ISO date)"),
    until: str | None = typer.Option(None, "--until", help="Day after the period (default: up to now)"),
    control: str | None = typer.Option(None, "--control", help="The control arm (default: 'control', else the "
                                       "first by name)"),
    expected: str | None = typer.Option(None, "--expected", help="Declared split for the ratio check, e.g. "
                                        "control=0.5,treatment=0.5 (default: RERANK_VARIANTS weights, else equal)"),
    method: str = typer.Option("delta", "--method", help="delta | bootstrap"),
    level: float = typer.Option(0.95, "--level", min=0.5, max=0.999, help="Confidence level"),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder for ab_report.html/.json (default: "
                                        "RERANK_HOME/reports/ab/<since>)"),
) -> None:
    """Per arm: exposed users, CTR, add-to-cart rate, conversion, revenue per exposed user, each against the
    control with an interval; a sample-ratio-mismatch check; an HTML page with plots. Last line: the page."""
    from datetime import date as date_

    from pipeline.reporting.ab import METRICS, readout, write_report

    try:
        start = date_.fromisoformat(since)
        end = date_.fromisoformat(until) if until else None
        split = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in expected.split(","))} if expected else None
    except ValueError as exc:
        raise ConfigError(f"bad --since/--until/--expected: {exc}",
                          "--since 2026-11-24 --expected a=0.5,b=0.5") from None
    r = readout(_url(), start, end, control=control, expected=split, method=method, level=level)
    table = Table(title=f"A/B readout since {start} (control {r.control}, {int(level * 100)}% {method} intervals)")
    for c in ["arm", "users", *METRICS]:
        table.add_column(c, justify="right")
    for row in r.arms.itertuples(index=False):
        cells = []
        for m in METRICS:
            d = r.diffs[(r.diffs["variant"] == row.variant) & (r.diffs["metric"] == m)]
            ci = f" [{d.iloc[0]['ci_low']:+.4f}, {d.iloc[0]['ci_high']:+.4f}]" if len(d) else ""
            cells.append(f"{getattr(row, m):.4f}{ci}")
        table.add_row(str(row.variant), str(row.exposed_users), *cells)
    out.print(table)
    srm = r.srm
    print(f"sample ratio check: users {dict(zip(srm['arms'], srm['observed'], strict=True))}, "
          f"p = {srm['p_value']}" + (" MISMATCH: do not trust the metrics" if srm.get("mismatch") else " ok"))
    print("better arm: " + ", ".join(f"{m} {r.winner(m) or 'none'}" for m in METRICS))
    folder = out_dir or (_settings().home_path / "reports" / "ab" / str(start))
    print(f"wrote {write_report(r, folder)['html']}")


def _confirm_replace(url: str, path: Path) -> None:
    """Ask before an import replaces a non-empty shop; without a terminal (or under CI) refuse instead."""
    import os

    from pipeline.db.shop import shop_rows

    held = [t for t, n in shop_rows(url).items() if n]
    if not held:
        return
    what = f"shop.{', shop.'.join(held)} already hold data; importing {path} replaces all of shop.*"
    if os.environ.get("CI") or not sys.stdin.isatty():
        raise ConfigError(what, "pass --replace to replace it (no terminal to ask on)")
    if not typer.confirm(f"{what}. Replace?", default=False, err=True):
        raise ConfigError("import cancelled: the shop is unchanged", "pass --replace to skip the question")


# --- runs ---------------------------------------------------------------------------------------------
@run_app.command("nightly")
def run_nightly_cmd(
    as_of: str | None = typer.Option(None, "--as-of", help="Use events before this date/time (default: today)"),
    stage: Stage | None = typer.Option(None, help="Run one stage only"),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="Retrain the ranker"),
    users: str | None = typer.Option(None, help="Comma-separated user ids to re-score (others keep their lists)"),
    top_n: int | None = typer.Option(None, help="List length (default RERANK_TOP_N)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Everything but the publication"),
) -> None:
    """The nightly run's stages in order, without Airflow."""
    from pipeline.nightly import run_nightly
    from pipeline.runs import parse_as_of

    try:
        user_ids = [int(u) for u in users.split(",")] if users else None
    except ValueError:
        raise ConfigError(f"--users must be comma-separated integers, got {users!r}") from None
    ts = parse_as_of(as_of)

    order = [stage.value] if stage else [s.value for s in Stage]

    with _progress(f"nightly: {order[0]}", total=len(order)) as step:
        def show(name: str, info: dict, secs: float) -> None:
            brief = {k: v for k, v in info.items() if not isinstance(v, dict | list)}
            out.print(f"[bold]{name:<14}[/bold] {secs:7.2f}s  {brief}")
            following = order[order.index(name) + 1:] if name in order else []
            step(f"nightly: {following[0]}" if following else f"nightly: {name} done")

        res = run_nightly(_settings(), as_of=ts, retrain=retrain, only_stage=stage.value if stage else None,
                          user_ids=user_ids, top_n=top_n, dry_run=dry_run, on_stage=show)
    print(f"run {res['run_id']} finished")


@app.command()
def recommend(
    user_id: int = typer.Argument(..., help="The user"),
    n: int = typer.Option(10, "--n", help="How many rows"),
    as_json: bool = typer.Option(False, "--json", help="JSON output"),
) -> None:
    """A user's published list with reasons (what downstream SQL reads)."""
    from pipeline.db.engine import connect

    with connect(_url()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT r.rank, r.item_id, i.title, i.category, r.score, r.reason, r.source, r.run_id "
            "FROM recsys.user_recommendations r JOIN shop.items i USING (item_id) "
            "WHERE r.user_id = %s ORDER BY r.rank LIMIT %s",
            (user_id, n),
        )
        rows = cur.fetchall()
    cols = ["rank", "item_id", "title", "category", "score", "reason", "source", "run_id"]
    if as_json:
        print(json.dumps([dict(zip(cols, r, strict=True)) for r in rows], ensure_ascii=False, default=str))
        return
    if not rows:
        print(f"user {user_id} has no published list")
        return
    table = Table(title=f"user {user_id} (run {rows[0][-1]})")
    for c in ["rank", "item", "title", "category", "score", "reason"]:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(str(r[0]), str(r[1]), str(r[2])[:40], str(r[3]), f"{r[4]:.4f}", r[5])
    out.print(table)


@app.command()
def refresh(
    once: bool = typer.Option(False, "--once", help="Process the pending events and exit (what the DAG runs)."),
    follow_: bool = typer.Option(False, "--follow", help="Run until stopped, woken by LISTEN/NOTIFY."),
    poll_seconds: float = typer.Option(5.0, "--poll-seconds", min=0.1, help="Polling fallback of --follow."),
    batch_size: int = typer.Option(2000, "--batch-size", min=1, help="Events per transaction."),
) -> None:
    """Near-real-time refresh: re-rank the users with new events, each event exactly once."""
    from pipeline.refresh import follow, refresh_once

    if once == follow_:
        raise ConfigError("choose exactly one of --once and --follow", "rerank refresh --once | --follow")
    url, home = _url(), str(_settings().home_path)
    if once:
        print(json.dumps(refresh_once(url, home, batch_size=batch_size), default=str))
        return

    def show(r: dict) -> None:
        if r["events"]:
            err.print(f"refreshed {r['users']} users from {r['events']} events in {r['seconds']} s")

    err.print("following shop.events (Ctrl-C or SIGTERM stops after the batch in flight)")
    # the URL is asked again at each reconnect: the embedded server's may change when it restarts
    print(json.dumps(follow(lambda: _url(start=False), home, poll_seconds=poll_seconds, batch_size=batch_size,
                            on_drain=show), default=str))


@app.command()
def evaluate(
    fmt: Format = typer.Option(..., "--format", help="Dataset format (as for `rerank import`)"),
    path: Path = typer.Option(..., help="Dataset path"),
    protocol: Protocol = typer.Option(..., help="msr-stratified | leave-one-out | temporal"),
    k: int = typer.Option(10, help="Cut-off"),
    models: str = typer.Option("random,popularity,item-cf", help="Comma-separated model names"),
    out_dir: Path = typer.Option(..., "--out", help="Output folder (metrics.json, report.html, splits, lists)"),
    params: str = typer.Option("", "--params",
                               help='JSON object: model -> its parameters, e.g. '
                               '{"research-stack": {"mmr_lambda": 1.0}}; @FILE reads it from a file'),
    config: Path | None = typer.Option(None, "--config",
                                       help="Settings profile (RERANK_<NAME>=value lines, e.g. profiles/*.env) for the "
                                       "nightly model"),
) -> None:
    """Import -> train -> recommend -> score on a throwaway database; write metrics.json and report.html."""
    from pipeline.evaluate.runner import run_evaluation

    model_params = _json_params(params)
    if config is not None:
        from pipeline.settings import read_profile

        model_params = model_params or {}
        model_params["nightly"] = {**read_profile(config), **model_params.get("nightly", {})}
    with _throwaway_database() as url, _progress(f"evaluating {models} on {path} ({protocol.value})"):
        result = run_evaluation(fmt.value, path, protocol=protocol.value, k=k,
                                models=[m for m in models.split(",") if m], out_dir=out_dir, url=url,
                                model_params=model_params)
    table = Table(title=f"{result['dataset']} / {result['protocol']} / k={result['k']}")
    keys = [f"ndcg@{k}", f"map@{k}", f"precision@{k}", f"recall@{k}", "coverage", "train_seconds"]
    table.add_column("model")
    for key in keys:
        table.add_column(key, justify="right")
    for r in result["results"]:
        table.add_row(r["model"], *[f"{r.get(key, float('nan')):.4f}" for key in keys])
    out.print(table)
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'report.html'}")


def _json_params(text: str) -> dict[str, dict] | None:
    """``--params`` as {model: {param: value}}; anything else is a ConfigError naming the problem."""
    if not text.strip():
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise ConfigError(f"--params {text}: no such file",
                              "pass @PATH of a JSON file, e.g. @research/params/ml-100k.json")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not valid JSON: {exc}", 'pass e.g. \'{"als": {"factors": 32}}\'') from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError("--params must be a JSON object of objects (model name -> its parameters)",
                          'e.g. \'{"research-stack": {"mmr_lambda": 0.8}}\'')
    return value


class _throwaway_database:
    """A private database on the configured server, dropped afterwards (never the shop's own); an embedded
    server that this call had to start is stopped again."""

    def __enter__(self) -> str:
        from pipeline.db.scratch import scratch_database

        self.started = None if _settings().database_url else _embedded()
        if self.started is not None and self.started.status()["running"]:
            self.started = None  # somebody else's server: leave it running
        self.server = _url()
        self.scratch = scratch_database(self.server)
        return self.scratch.__enter__()

    def __exit__(self, *exc: object) -> None:
        from pipeline.db.scratch import server_in_use

        try:
            self.scratch.__exit__(*exc)
        finally:
            if self.started is not None:
                if server_in_use(self.server):  # another evaluation started on it meanwhile: keep it up
                    print("the embedded PostgreSQL stays up: another evaluation uses it (`rerank db down` stops "
                          "it)", file=sys.stderr)
                else:
                    self.started.down()


@publish_app.command("rollback")
def publish_rollback() -> None:
    """Make the previous publication live again."""
    from pipeline.publish import rollback

    res = rollback(_url())
    print(f"live again: run {res['run_id']} (publication {res['publication_id']}); "
          f"{res['overlay_rows_dropped']} near-real-time rows built on the rolled-back run dropped "
          "(the refresh rebuilds those users' lists)")


@models_app.command("list")
def models_list() -> None:
    """Every registered ranker with its status and holdout nDCG@10: on every intent (what the gate judges)
    and on items new to the user (models registered before this figure existed show none)."""
    from pipeline.rank.registry import list_models

    rows = list_models(_url())
    table = Table(title="recsys.models")
    for c in ["model_version", "status", "trained_at", "ndcg@10", "ndcg@10 new items", "run_id"]:
        table.add_column(c)
    for r in rows:
        m = r.get("metrics") or {}
        shown = ["" if m.get(key) is None else f"{m[key]:.4f}" for key in ("ndcg@10", "ndcg@10_new")]
        table.add_row(str(r["model_version"]), str(r["status"]), str(r["trained_at"])[:19], *shown,
                      str(r.get("run_id") or ""))
    out.print(table)


@models_app.command("promote")
def models_promote(version: str = typer.Argument(..., help="model_version to make champion")) -> None:
    """Make VERSION the champion (the current one is retired)."""
    from pipeline.rank.registry import promote

    promote(_url(), version)
    print(f"champion: {version}")


@models_app.command("rollback")
def models_rollback() -> None:
    """Restore the previous champion."""
    from pipeline.rank.registry import rollback as model_rollback

    res = model_rollback(_url())
    print(f"champion: {res['champion']} (rolled back {res['rolled_back']})")


def main() -> None:
    try:
        app(standalone_mode=False)
    except PipelineError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:
        sys.exit(1)
    except FileNotFoundError as exc:  # an artefact of a run deleted or never written
        err.print(f"[red]error:[/red] a file this command needs is missing: {exc.filename or exc} (check: "
                  "RERANK_HOME is the home the nightly run wrote to; re-run `rerank run nightly` for that date)",
                  highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # usage errors: click's, or those of the click copy that Typer 0.2x ships
        import click

        code = getattr(exc, "exit_code", None)
        if isinstance(exc, click.exceptions.Exit) or (type(exc).__name__ == "Exit" and isinstance(code, int)):
            sys.exit(code)
        if isinstance(exc, click.ClickException) or (hasattr(exc, "show") and isinstance(code, int)):
            exc.show()
            sys.exit(code)
        raise


__all__ = ["app", "main"]
