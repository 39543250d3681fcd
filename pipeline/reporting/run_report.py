"""The per-run HTML report: one page beside the run's stage files (``RERANK_HOME/runs/<run_id>/report.html``),
linked from ``recsys.runs.report_uri``, for the on-call engineer who wants to know what changed.

Sections (stable ids; a test opens the page in headless Chromium and finds each): ``summary``, ``warnings``,
``stage-times`` (each stage's seconds against the last successful run of the same DAG), ``gate`` (the ranker's
holdout figures and the output quality gate's, against the last run), ``drift`` (PSI of the inputs: the event
mix, item popularity and the new items and users of the run's last day against the week before it, from the
run's own snapshot; the published score distribution against the last run's lists), ``coverage-diversity``
and ``model`` (the model the run scored with, whether the candidate was promoted and why). A section whose
input is missing says so instead of failing: a report must never fail the run it describes.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import runs
from pipeline.reporting import drift
from pipeline.reporting import html as h

SECTIONS = ("summary", "warnings", "stage-times", "gate", "drift", "coverage-diversity", "model")
REPORT_FILE = "report.html"
#: A stage that took more than this many times its time in the last run (and over a minute) warns.
SLOW_FACTOR = 2.0
GATE_KEYS = ("ndcg@10", "hr@10", "recall_only_ndcg@10", "ndcg@10_new", "candidate_ndcg@10", "champion_ndcg@10",
             "train_groups", "holdout_users")
QUALITY_KEYS = ("users", "rows", "coverage", "diversity", "fallback_share", "churn", "short_lists", "empty_lists")

def _stages(run_dir: Path, stats: dict | None) -> dict[str, dict]:
    folder = run_dir / "stages"
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}
    return found or dict((stats or {}).get("stages") or {})

def _run_rows(url: str, run_id: str) -> tuple[dict, dict | None]:
    """This run's row and the last successful run of the same DAG before it (None: the first)."""
    from pipeline.db.engine import connect

    cols = "run_id, dag, as_of, status, started_at, finished_at, stats"
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM recsys.runs WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
        if row is None:
            return {"run_id": run_id, "stats": {}}, None
        this = dict(zip(cols.split(", "), row, strict=True))
        cur.execute(f"SELECT {cols} FROM recsys.runs WHERE dag = %s AND as_of < %s AND status = 'success' "
                    "ORDER BY as_of DESC LIMIT 1", (this["dag"], this["as_of"]))
        prev = cur.fetchone()
    return this, dict(zip(cols.split(", "), prev, strict=True)) if prev else None

def _compare(this: dict, last: dict, keys: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for k in keys:
        a, b = this.get(k), last.get(k)
        if a is None and b is None:
            continue
        num = isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
        rows.append({"figure": k, "this run": a, "last run": b, "change": (a - b) if num else None})
    return pd.DataFrame(rows)

def _flat(stage: dict) -> dict:
    """A stage's figures one level deep (``figures`` / ``metrics`` dicts merged in)."""
    out = {k: v for k, v in stage.items() if not isinstance(v, dict)}
    for v in stage.values():
        if isinstance(v, dict):
            out.update({k: x for k, x in v.items() if not isinstance(x, dict | list)})
    return out

def _recent_events(snap: Path, as_of: datetime, days: int = 8) -> pd.DataFrame:
    from pipeline.extract.snapshot import read_events

    start = pd.Timestamp(as_of) - pd.Timedelta(days=days)
    cols = ["user_id", "item_id", "event_type", "ts"]
    try:
        ev = read_events(snap, columns=cols, filters=[("ts", ">=", start)])
    except Exception:  # noqa: BLE001 - older layouts: filter after reading
        ev = read_events(snap, columns=cols)
    ev = ev.assign(ts=pd.to_datetime(ev["ts"], utc=True))
    return ev[ev["ts"] >= start]

def _scores(run_dir: Path) -> np.ndarray:
    parts = sorted((run_dir / "recs").glob("part-*.parquet"))
    if not parts:
        return np.zeros(0)
    return np.concatenate([pd.read_parquet(p, columns=["score"])["score"].to_numpy(float) for p in parts])

def input_drift(run_dir: Path, prev_dir: Path | None, as_of: datetime, *, warn: float, alert: float) -> pd.DataFrame:
    """Rows (input, reference, PSI, level, detail): the run's last day against the 7 days before it."""
    rows = []
    snap = run_dir / "snapshot"
    day = pd.Timestamp(as_of) - pd.Timedelta(days=1)
    try:
        ev = _recent_events(snap, as_of)
    except (FileNotFoundError, OSError, ValueError) as exc:
        ev = None
        rows.append({"input": "events", "reference": "-", "psi": np.nan, "level": "n/a",
                     "detail": f"no snapshot events to read ({type(exc).__name__})"})
    if ev is not None:
        cur, ref = ev[ev["ts"] >= day], ev[ev["ts"] < day]
        rows.append({"input": "event mix (event_type shares)", "reference": "7 days before the last day",
                     "psi": drift.psi_categorical(ref["event_type"], cur["event_type"]),
                     "detail": f"{len(cur)} events on the last day, {len(ref) / 7:.0f} a day before"})
        items_r = ref["item_id"].dropna().astype("int64")
        items_c = cur["item_id"].dropna().astype("int64")
        rows.append({"input": "item popularity (events per popularity decile)", "reference": "7 days before",
                     "psi": drift.psi_popularity(items_r, items_c),
                     "detail": f"{items_c.nunique()} items touched on the last day"})
    for what in ("users", "items"):
        path = snap / f"{what}.parquet"
        if not path.exists():
            continue
        created = pd.to_datetime(pd.read_parquet(path, columns=["created_at"])["created_at"], utc=True)
        new = int((created >= day).sum())
        before = int(((created >= day - pd.Timedelta(days=7)) & (created < day)).sum()) / 7
        ratio = new / before if before else (np.inf if new else 1.0)
        lvl = "alert" if ratio >= 5 or (before >= 5 and ratio <= 0.2) else "warn" if ratio >= 2 or ratio <= 0.5 \
            else "ok"
        if before < 1 and new < 5:
            lvl = "ok"
        rows.append({"input": f"new {what}", "reference": "daily mean of the 7 days before", "psi": np.nan,
                     "level": lvl, "detail": f"{new} on the last day, {before:.1f} a day before (x{ratio:.2f})"})
    now = _scores(run_dir)
    if prev_dir is not None and len(now):
        before = _scores(prev_dir)
        rows.append({"input": "published score distribution", "reference": f"last run {prev_dir.name}",
                     "psi": drift.psi_numeric(before, now) if len(before) else np.nan,
                     "detail": f"{len(now)} rows, median {np.median(now):.4g}"
                               + (f" (last run {np.median(before):.4g})" if len(before) else "")})
    else:
        rows.append({"input": "published score distribution", "reference": "-", "psi": np.nan, "level": "n/a",
                     "detail": "no last run's lists to compare with" if len(now) else "no lists in this run"})
    out = pd.DataFrame(rows)
    lvl = [drift.level(p, warn, alert) for p in out["psi"]]
    out["level"] = [given if isinstance(given, str) else computed
                    for given, computed in zip(out.get("level", pd.Series([None] * len(out))), lvl, strict=True)]
    return out[["input", "reference", "psi", "level", "detail"]]

def _plot_stage_times(times: pd.DataFrame) -> str:
    if times.empty:
        return ""
    pyplot = h.plt()
    fig, ax = pyplot.subplots(figsize=(10, 3.2))
    x = np.arange(len(times))
    ax.bar(x - 0.2, times["this run"].astype(float), 0.4, label="this run")
    ax.bar(x + 0.2, times["last run"].astype(float).fillna(0), 0.4, label="last run")
    ax.set_xticks(x, times["stage"], rotation=30, ha="right")
    ax.set_ylabel("seconds")
    ax.legend()
    return h.png(fig, "stage times")

def _plot_scores(run_dir: Path, prev_dir: Path | None) -> str:
    now = _scores(run_dir)
    if not len(now):
        return ""
    pyplot = h.plt()
    fig, ax = pyplot.subplots(figsize=(7, 3))
    bins = np.linspace(float(np.nanmin(now)), float(np.nanmax(now)) + 1e-12, 40)
    ax.hist(now, bins=bins, alpha=0.6, density=True, label="this run")
    before = _scores(prev_dir) if prev_dir is not None else np.zeros(0)
    if len(before):
        ax.hist(before, bins=bins, alpha=0.5, density=True, label="last run")
    ax.set_xlabel("published score")
    ax.legend()
    return h.png(fig, "score distribution")

def build_report(url: str, home: str | Path, run_id: str, *, psi_warn: float = 0.1,
                 psi_alert: float = 0.25) -> tuple[str, list[str]]:
    """The page's HTML and the warnings it raises."""
    run_dir = runs.run_dir(home, run_id)
    this, prev = _run_rows(url, run_id)
    stages = _stages(run_dir, this.get("stats"))
    prev_dir = None
    prev_stages: dict[str, dict] = {}
    if prev is not None:
        candidate = Path(home).expanduser().resolve() / "runs" / prev["run_id"]
        prev_dir = candidate if candidate.exists() else None
        prev_stages = _stages(candidate, prev.get("stats")) if prev_dir else dict((prev["stats"] or {}).get("stages")
                                                                                  or {})
    warnings: list[str] = []
    # stage times
    times = pd.DataFrame([{"stage": s, "this run": (stages.get(s) or {}).get("seconds"),
                           "last run": (prev_stages.get(s) or {}).get("seconds")}
                          for s in dict.fromkeys([*stages, *prev_stages])])
    for r in times.itertuples(index=False):
        now, before = r[1], r[2]
        if now and before and now > SLOW_FACTOR * before and now > 60:
            warnings.append(f"stage {r[0]} took {now:.0f}s, {now / before:.1f}x the last run's {before:.0f}s")
    # gates
    gate_this = {**_flat(stages.get("train_ranker", {})), **_flat(stages.get("evaluate_gate", {}))}
    gate_last = {**_flat(prev_stages.get("train_ranker", {})), **_flat(prev_stages.get("evaluate_gate", {}))}
    quality_this, quality_last = _flat(stages.get("quality_gate", {})), _flat(prev_stages.get("quality_gate", {}))
    # drift
    as_of = pd.Timestamp(this.get("as_of") or datetime.now()).to_pydatetime()
    dr = input_drift(run_dir, prev_dir, as_of, warn=psi_warn, alert=psi_alert)
    for r in dr.itertuples(index=False):
        if r.level in ("warn", "alert"):
            psi_txt = f"PSI {r.psi:.3f}" if np.isfinite(r.psi) else r.detail
            warnings.append(f"input drift ({r.level}): {r.input}: {psi_txt}")
    # coverage and diversity
    cov = {k: quality_this.get(k) for k in ("coverage", "diversity", "fallback_share", "churn", "users", "rows")}
    cov_last = {k: quality_last.get(k) for k in cov}
    if isinstance(cov["coverage"], float) and isinstance(cov_last["coverage"], float) and \
            cov["coverage"] < 0.5 * cov_last["coverage"]:
        warnings.append(f"catalogue coverage fell to {cov['coverage']:.3f} from {cov_last['coverage']:.3f}")
    # model
    ev = stages.get("evaluate_gate", {})
    tr = stages.get("train_ranker", {})
    model_rows = pd.DataFrame([
        {"what": "scored with", "value": ev.get("scoring_model") or tr.get("model_version") or "-"},
        {"what": "candidate", "value": ev.get("candidate") or tr.get("model_version") or "-"},
        {"what": "promoted", "value": ev.get("promoted")},
        {"what": "why", "value": ev.get("reason") or tr.get("reason") or "-"},
        {"what": "champion before the run", "value": ev.get("champion") or "-"},
    ])
    status = this.get("status")
    summary = (f"<p>run <b>{h.esc(run_id)}</b> of {h.esc(this.get('dag'))}, as_of {h.esc(this.get('as_of'))}, "
               f"status <b>{h.esc(status)}</b>, started {h.esc(this.get('started_at'))}, finished "
               f"{h.esc(this.get('finished_at') or '-')}; compared with "
               f"{h.esc(prev['run_id']) if prev else 'no earlier successful run'}.</p>")
    warn_body = ("<ul>" + "".join(f'<li class="warn">{h.esc(w)}</li>' for w in warnings) + "</ul>") if warnings \
        else '<p class="ok">no warnings</p>'
    dr_html = dr.assign(level=dr["level"].map(lambda v: f"{v}"))
    sections = [
        h.section("summary", "Run", summary),
        h.section("warnings", "Warnings", warn_body),
        h.section("stage-times", "Stage times (seconds)", h.table(times, digits=2) + _plot_stage_times(times)),
        h.section("gate", "Gates against the last run",
                  "<h3>ranker holdout</h3>" + h.table(_compare(gate_this, gate_last, GATE_KEYS),
                                                      empty="no ranker figures in this run")
                  + "<h3>output quality gate</h3>" + h.table(_compare(quality_this, quality_last, QUALITY_KEYS),
                                                             empty="no quality gate figures in this run")),
        h.section("drift", "Input drift", f"<p>PSI: warn at {psi_warn}, alert at {psi_alert}.</p>"
                  + h.table(dr_html) + _plot_scores(run_dir, prev_dir)),
        h.section("coverage-diversity", "Coverage and diversity", h.table(_compare(cov, cov_last, tuple(cov)),
                                                                         empty="no lists checked in this run")),
        h.section("model", "Model", h.table(model_rows)),
    ]
    return h.page(f"ecom-rerank run {run_id}", sections, f"status {status}"), warnings

def write_run_report(url: str, home: str | Path, run_id: str, *, psi_warn: float | None = None,
                     psi_alert: float | None = None) -> dict:
    """Write ``runs/<run_id>/report.html``, link it from ``recsys.runs`` (``report_uri`` and
    ``stats->'report'``); returns ``{"report_html", "warnings"}``."""
    from pipeline.db.engine import connect
    from pipeline.files import write_text
    from pipeline.settings import get_settings

    s = get_settings()
    page, warnings = build_report(url, home, run_id, psi_warn=s.drift_psi_warn if psi_warn is None else psi_warn,
                                  psi_alert=s.drift_psi_alert if psi_alert is None else psi_alert)
    path = runs.run_dir(home, run_id) / REPORT_FILE
    write_text(path, page)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.runs SET report_uri = %s, stats = stats || jsonb_build_object('report', "
                    "%s::jsonb) WHERE run_id = %s",
                    (str(path), json.dumps({"html": str(path), "warnings": warnings}), run_id))
    return {"report_html": str(path), "warnings": warnings}

__all__ = ["SECTIONS", "build_report", "input_drift", "write_run_report"]
