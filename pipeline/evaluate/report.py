"""The evaluation report: one self-contained HTML page (plots are PNGs embedded as base64).

Sections (their ids are stable; tests and readers look for them): ``metrics`` (table per model with the
published reference figures beside ours), ``references``, ``plot-metrics``, ``plot-accuracy-diversity``,
``plot-popularity``, ``plot-segments``, ``behaviour`` with ``funnel``, ``repurchase``, ``category-affinity``
and ``rfm``. Every section renders something readable even when its input is missing (it says why).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.frames import EVENT_COL, ITEM_COL, TS_COL, USER_COL, ShopFrames
from pipeline.metrics import popularity_curve

SECTIONS = ("metrics", "references", "plot-metrics", "plot-accuracy-diversity", "plot-popularity",
            "plot-segments", "behaviour", "funnel", "repurchase", "category-affinity", "rfm")

#: Published nDCG@10 figures: (dataset key, protocol) -> rows (method, our comparable model, value, source).
REFERENCES: dict[tuple[str, str], list[tuple[str, str | None, float, str]]] = {
    ("ml-100k", "msr-stratified"): [
        ("SAR", "sar", 0.382, "Microsoft Recommenders MovieLens 100K benchmark table"),
        ("BPR (cornac)", "bpr", 0.442, "Microsoft Recommenders MovieLens 100K benchmark table"),
        ("BiVAE", None, 0.475, "Microsoft Recommenders MovieLens 100K benchmark table"),
        ("item-kNN cosine", "item-cf", 0.411, "reference run on this split with MSR evaluation (issue 5)"),
        ("SAR", "sar", 0.394, "reference run on this split with MSR evaluation (issue 5)"),
        ("implicit ALS, tuned", "als", 0.483, "reference run on this split with MSR evaluation (issue 5)"),
        ("cornac BPR", "bpr", 0.445, "reference run on this split with MSR evaluation (issue 5)"),
        ("popularity", "popularity", 0.252, "reference run on this split with MSR evaluation (issue 5)"),
    ],
    ("beauty", "leave-one-out"): [
        ("SASRec", None, 0.0318, "S3-Rec (Zhou et al., CIKM 2020), full ranking"),
        ("S3-Rec", None, 0.0327, "S3-Rec (Zhou et al., CIKM 2020), full ranking"),
    ],
    ("sports", "leave-one-out"): [
        ("SASRec", None, 0.0192, "S3-Rec (Zhou et al., CIKM 2020), full ranking"),
        ("S3-Rec", None, 0.0204, "S3-Rec (Zhou et al., CIKM 2020), full ranking"),
    ],
}


def references_for(dataset: str, protocol: str) -> list[tuple[str, str | None, float, str]]:
    """Reference rows whose dataset key occurs in ``dataset`` (case-insensitive) for ``protocol``."""
    name = dataset.lower().replace("_", "-")
    if "movielens" in name and "100" in name:
        name += " ml-100k"
    return [r for (key, proto), rows in REFERENCES.items() if key in name and proto == protocol for r in rows]


# ---------------------------------------------------------------------------------------------------------
# plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return '<img alt="plot" src="data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _plot_metrics(res: pd.DataFrame, k: int) -> str:
    plt = _plt()
    cols = [c for c in (f"ndcg@{k}", f"map@{k}", f"precision@{k}", f"recall@{k}", f"hr@{k}", f"mrr@{k}")
            if c in res.columns]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(cols))
    w = 0.8 / max(len(res), 1)
    for j, (_, row) in enumerate(res.iterrows()):
        ax.bar(x + j * w - 0.4 + w / 2, [row[c] for c in cols], w, label=row["model"])
    ax.set_xticks(x, cols)
    ax.set_ylabel("value")
    ax.set_title(f"Ranking metrics at k={k} per model")
    ax.legend(ncol=min(len(res), 6), fontsize=9)
    return _png(fig)


def _plot_acc_div(res: pd.DataFrame, k: int) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, xcol, label in ((axes[0], f"ild@{k}", f"intra-list diversity ILD@{k}"),
                            (axes[1], "coverage", "catalogue coverage")):
        ax.scatter(res[xcol], res[f"ndcg@{k}"], s=60)
        for _, r in res.iterrows():
            ax.annotate(r["model"], (r[xcol], r[f"ndcg@{k}"]), textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel(label)
        ax.set_ylabel(f"nDCG@{k}")
    fig.suptitle("Accuracy vs diversity and coverage")
    return _png(fig)


def _plot_popularity(recs: dict[str, pd.DataFrame], train: pd.DataFrame, k: int) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4.5))
    base = None
    for name, r in recs.items():
        c = popularity_curve(r, train, k)
        base = c if base is None else base
        ax.plot(c["bin"] + 1, c["rec_share"].cumsum(), marker="o", label=name)
    if base is not None:
        ax.plot(base["bin"] + 1, base["train_share"].cumsum(), "k--", label="training interactions")
    ax.set_xlabel("item popularity decile (1 = most popular 10% of items)")
    ax.set_ylabel("cumulative share of recommendations")
    ax.set_title("Popularity bias: where each model's recommendations fall in the popularity ranking")
    ax.legend(fontsize=9)
    return _png(fig)


def _plot_segments(seg: pd.DataFrame, k: int) -> str:
    plt = _plt()
    seg = seg.dropna(subset=["ndcg"])
    piv = seg.pivot_table(index="segment", columns="model", values="ndcg", sort=False)
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(piv) + 2.5))
    piv.plot.barh(ax=ax)
    ax.invert_yaxis()
    ax.set_xlabel(f"nDCG@{k}")
    ax.set_ylabel("")
    ax.set_title(f"nDCG@{k} by segment")
    ax.legend(fontsize=9)
    return _png(fig)


# ---------------------------------------------------------------------------------------------------------
# user-behaviour analysis (from the events themselves, not from any model)

FUNNEL = ("view", "click", "add_to_cart", "purchase")


def behaviour_tables(frames: ShopFrames) -> dict[str, pd.DataFrame]:
    """Funnel, repurchase intervals, category affinity and RFM segments from a shop's events."""
    ev = frames.events
    out: dict[str, pd.DataFrame] = {}
    n_users = ev[USER_COL].nunique()
    rows = []
    prev = None
    for et in FUNNEL:
        sub = ev[ev[EVENT_COL] == et]
        users = set(sub[USER_COL].unique())
        reached = len(users)
        row = {"event_type": et, "events": len(sub), "users": reached,
               "share of all users": reached / n_users if n_users else np.nan,
               "conversion from previous step": (len(users & prev) / len(prev)) if prev else np.nan}
        rows.append(row)
        if reached:
            prev = users
    other = ev[~ev[EVENT_COL].isin(FUNNEL)][EVENT_COL].value_counts()
    for et, cnt in other.items():
        n_et = ev[ev[EVENT_COL] == et][USER_COL].nunique()
        rows.append({"event_type": et, "events": int(cnt), "users": n_et,
                     "share of all users": np.nan, "conversion from previous step": np.nan})
    out["funnel"] = pd.DataFrame(rows)

    buys = ev[ev[EVENT_COL] == "purchase"].sort_values(TS_COL)
    if len(buys):
        gaps = buys.groupby([USER_COL, ITEM_COL])[TS_COL].diff().dropna().dt.total_seconds() / 86400
        user_gaps = buys.groupby(USER_COL)[TS_COL].diff().dropna().dt.total_seconds() / 86400
        out["repurchase"] = pd.DataFrame({
            "measure": ["purchases", "buyers", "repeat purchases of the same item",
                        "median days between repeat purchases of an item",
                        "median days between a user's purchases"],
            "value": [len(buys), buys[USER_COL].nunique(), len(gaps),
                      float(gaps.median()) if len(gaps) else np.nan,
                      float(user_gaps.median()) if len(user_gaps) else np.nan]})
        out["_repurchase_gaps"] = pd.DataFrame({"days": gaps.to_numpy()})
    else:
        out["repurchase"] = pd.DataFrame({"measure": ["purchases"], "value": [0]})

    items = frames.items
    if "category" in items.columns and items["category"].notna().any():
        cat = items.set_index(ITEM_COL)["category"].astype(str).str.split("|").str[0].str.split(">").str[0]
        evc = ev.dropna(subset=[ITEM_COL]).assign(category=lambda d: d[ITEM_COL].map(cat)).dropna(
            subset=["category"])
        per = evc.groupby("category").agg(events=(USER_COL, "size"), users=(USER_COL, "nunique"))
        ucat = evc.groupby([USER_COL, "category"]).size()
        top_share = (ucat.groupby(level=0).max() / ucat.groupby(level=0).sum())
        fav = ucat.reset_index().sort_values(0, ascending=False).drop_duplicates(USER_COL)["category"]
        per["users whose top category it is"] = fav.value_counts().reindex(per.index, fill_value=0)
        per["share of events"] = per["events"] / per["events"].sum()
        out["category_affinity"] = per.sort_values("events", ascending=False).head(15).reset_index()
        out["_top_share"] = pd.DataFrame({"share": top_share.to_numpy()})
    else:
        out["category_affinity"] = pd.DataFrame()

    out["rfm"] = rfm_segments(frames)
    return out


def rfm_segments(frames: ShopFrames) -> pd.DataFrame:
    """Recency / frequency / monetary tertiles (1 = low, 3 = high) and named segments, per segment size.

    Purchases are used when the shop has them; otherwise every event counts (and monetary = events) so
    that rating or browsing data still shows who is active.
    """
    ev = frames.events.dropna(subset=[ITEM_COL])
    buys = ev[ev[EVENT_COL] == "purchase"]
    basis = buys if len(buys) else ev
    if basis.empty:
        return pd.DataFrame()
    price = frames.items.set_index(ITEM_COL)["price"] if "price" in frames.items.columns else None
    amount = basis.get("quantity", pd.Series(1, index=basis.index)).fillna(1).astype(float)
    if price is not None and len(buys) and pd.to_numeric(price, errors="coerce").notna().any():
        amount = amount * basis[ITEM_COL].map(pd.to_numeric(price, errors="coerce")).fillna(0.0)
    now = basis[TS_COL].max()
    g = basis.assign(_amount=amount).groupby(USER_COL)
    rfm = pd.DataFrame({"recency_days": (now - g[TS_COL].max()).dt.total_seconds() / 86400,
                        "frequency": g.size(), "monetary": g["_amount"].sum()})

    def tertile(s: pd.Series, high_is_good: bool = True) -> pd.Series:
        r = s.rank(method="first", pct=True)
        r = r if high_is_good else 1 - r + 1e-9
        return np.ceil(r * 3).clip(1, 3).astype(int)

    rfm["R"], rfm["F"], rfm["M"] = tertile(rfm["recency_days"], False), tertile(rfm["frequency"]), \
        tertile(rfm["monetary"])
    seg = np.select(
        [(rfm.R == 3) & (rfm.F == 3), (rfm.R >= 2) & (rfm.F >= 2), rfm.R == 3, (rfm.R == 1) & (rfm.F >= 2)],
        ["champions", "loyal", "recent, new or light", "at risk"], default="hibernating")
    rfm["segment"] = seg
    summary = rfm.groupby("segment").agg(users=("R", "size"), median_recency_days=("recency_days", "median"),
                                         median_frequency=("frequency", "median"),
                                         median_monetary=("monetary", "median"))
    summary["basis"] = "purchases" if len(buys) else "all events (no purchases in this data)"
    return summary.sort_values("users", ascending=False).reset_index()


def _table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    if df is None or df.empty:
        return "<p class='note'>No data for this table.</p>"
    return df.to_html(index=False, border=0, classes="t", na_rep="–",
                      float_format=lambda v: floatfmt.format(v))


def _behaviour_plots(tabs: dict[str, pd.DataFrame]) -> dict[str, str]:
    plt = _plt()
    out = {}
    f = tabs["funnel"]
    if len(f):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(f["event_type"], f["users"], color="#4c72b0")
        ax.set_ylabel("users with the event")
        ax.set_title("Funnel: users reaching each event type")
        out["funnel"] = _png(fig)
    if "_repurchase_gaps" in tabs and len(tabs["_repurchase_gaps"]):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.hist(tabs["_repurchase_gaps"]["days"], bins=30, color="#55a868")
        ax.set_xlabel("days between repeat purchases of the same item")
        ax.set_ylabel("count")
        out["repurchase"] = _png(fig)
    if "_top_share" in tabs and len(tabs["_top_share"]):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.hist(tabs["_top_share"]["share"], bins=20, color="#c44e52")
        ax.set_xlabel("share of a user's events in their favourite category")
        ax.set_ylabel("users")
        ax.set_title("Category affinity")
        out["category-affinity"] = _png(fig)
    return out


# ---------------------------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:1.8em}
table.t{border-collapse:collapse;font-size:0.92em;margin:8px 0}table.t td,table.t th{padding:4px 10px;
border-bottom:1px solid #e4e4e4;text-align:right}table.t th{background:#f4f4f4}table.t td:first-child,
table.t th:first-child{text-align:left}.note{color:#666;font-size:0.92em}img{max-width:100%}"""


def render_report(metrics: dict, frames: ShopFrames | None = None,
                  recs: dict[str, pd.DataFrame] | None = None, *, train: pd.DataFrame | None = None,
                  segments: pd.DataFrame | None = None, details: dict | None = None) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    k = int(metrics["k"])
    res = pd.DataFrame(metrics["results"])
    refs = references_for(str(metrics.get("dataset", "")), str(metrics.get("protocol", "")))
    parts = [f"<h1>Offline evaluation: {html.escape(str(metrics.get('dataset')))} · "
             f"{html.escape(str(metrics.get('protocol')))} · k={k}</h1>"]
    if details and details.get("notes"):
        parts.append("<p class='note'>" + "<br>".join(html.escape(n) for n in details["notes"]) + "</p>")

    table = res.copy()
    if refs and len(table):
        best: dict[str, str] = {}
        for _method, ours, value, source in refs:
            if ours:
                best.setdefault(ours, "")
                tag = "published" if source.startswith(("Microsoft", "S3-Rec")) else "reference run"
                best[ours] += f"{value:.3f} <small>({tag})</small><br>"
        table[f"reference nDCG@{k}"] = table["model"].map(best).fillna("–")
    parts.append("<h2 id='metrics'>Metrics per model</h2>")
    parts.append(table.to_html(index=False, border=0, classes="t", escape=False, na_rep="–",
                               float_format=lambda v: f"{v:.4f}"))
    if details and details.get("beyond"):
        parts.append("<p class='note'>Beyond accuracy (same lists):</p>")
        parts.append(_table(pd.DataFrame(details["beyond"])))
    if details and details.get("valid"):
        parts.append("<p class='note'>Validation step (item -2 ranked from items[:-2]), same fitted "
                     "models:</p>")
        parts.append(_table(pd.DataFrame(details["valid"])))

    parts.append("<h2 id='references'>Published reference figures</h2>")
    if refs:
        parts.append(_table(pd.DataFrame(refs, columns=["method", "our comparable model", f"nDCG@{k}",
                                                        "source"]).fillna("–"), "{:.4f}"))
        parts.append("<p class='note'>Published figures are nDCG@10; they are comparable to ours only for "
                     "the same protocol and k.</p>")
    else:
        parts.append("<p class='note'>No published figures are recorded for this dataset and protocol.</p>")

    parts.append("<h2 id='plot-metrics'>Metric per model</h2>")
    parts.append(_plot_metrics(res, k) if len(res) else "<p class='note'>No results.</p>")
    parts.append("<h2 id='plot-accuracy-diversity'>Accuracy vs diversity</h2>")
    parts.append(_plot_acc_div(res, k) if len(res) and f"ild@{k}" in res.columns else
                 "<p class='note'>No results.</p>")
    parts.append("<h2 id='plot-popularity'>Coverage and popularity bias</h2>")
    if train is None and frames is not None:
        train = frames.events.dropna(subset=[ITEM_COL])[[USER_COL, ITEM_COL]]
    if recs and train is not None and len(train):
        parts.append(_plot_popularity(recs, train, k))
    else:
        parts.append("<p class='note'>Needs the recommendation lists and training data.</p>")
    parts.append("<h2 id='plot-segments'>Metrics by segment</h2>")
    if segments is not None and len(segments):
        parts.append(_plot_segments(segments, k))
        parts.append(_table(segments.pivot_table(index="segment", columns="model", values="ndcg",
                                                 sort=False).rename_axis(columns=None).reset_index()))
        users = segments.drop_duplicates("segment")[["segment", "users"]]
        parts.append("<p class='note'>Users per segment: " + ", ".join(
            f"{html.escape(str(s))}: {int(u)}" for s, u in users.itertuples(index=False)) + "</p>")
    else:
        parts.append("<p class='note'>No segment figures were computed.</p>")

    parts.append("<h2 id='behaviour'>User-behaviour analysis</h2>")
    if frames is None or frames.events.empty:
        parts.append("<p class='note'>No events were given.</p>")
        for sid, title in (("funnel", "Funnel"), ("repurchase", "Repurchase intervals"),
                           ("category-affinity", "Category affinity"), ("rfm", "RFM segments")):
            parts.append(f"<h3 id='{sid}'>{title}</h3><p class='note'>No data.</p>")
    else:
        tabs = behaviour_tables(frames)
        plots = _behaviour_plots(tabs)
        parts.append(f"<p class='note'>{len(frames.events):,} events, {frames.events[USER_COL].nunique():,} "
                     f"users, {frames.events[ITEM_COL].nunique():,} items.</p>")
        parts.append("<h3 id='funnel'>Funnel conversion by event type</h3>" + _table(tabs["funnel"])
                     + plots.get("funnel", ""))
        parts.append("<h3 id='repurchase'>Repurchase intervals</h3>" + _table(tabs["repurchase"], "{:.2f}")
                     + plots.get("repurchase", ""))
        parts.append("<h3 id='category-affinity'>Category affinity</h3>" + _table(tabs["category_affinity"])
                     + plots.get("category-affinity", ""))
        parts.append("<h3 id='rfm'>RFM segments</h3>" + _table(tabs["rfm"], "{:.1f}"))
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def write_report(out_dir: str | Path, metrics: dict, frames: ShopFrames | None,
                 recs: dict[str, pd.DataFrame] | None, *, train: pd.DataFrame | None = None,
                 segments: pd.DataFrame | None = None, details: dict | None = None) -> Path:
    """Write ``out_dir/report.html`` (plots embedded) and return its path.

    ``metrics`` is the metrics.json dict; ``frames`` feeds the user-behaviour section; ``recs`` (model ->
    lists) and ``train`` feed the popularity plot; ``segments`` (model, segment, users, ndcg, ...) the
    segment plot; ``details`` may carry ``notes``, ``beyond`` (per-model extra metrics) and ``valid``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(render_report(metrics, frames, recs, train=train, segments=segments, details=details),
                    encoding="utf-8")
    return path


