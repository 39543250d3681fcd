"""The A/B readout: per arm, the exposed users' CTR, add-to-cart rate, conversion and revenue per exposed user,
each arm against the control with a confidence interval, and a sample-ratio-mismatch (SRM) check.

Unit of analysis: the exposed user (``recsys.ab_user_daily`` summed over the period): CTR is a ratio of two
per-user sums (clicked shown items / impressions), so its variance comes from the delta method; the other
three are means of per-user values. The difference of an arm against the control gets a normal interval
(``z * sqrt(var_a + var_c)``), or with ``method="bootstrap"`` a percentile interval from a Poisson bootstrap
of users (each user resampled with a Poisson(1) weight, per arm, ``n_boot`` times; seeded).

SRM: a chi-square goodness-of-fit test of the exposed users per arm against the declared split (the
``RERANK_VARIANTS`` weights of the arms present, else equal); ``p < SRM_ALPHA`` means the assignment or the
logging is broken and no metric of the readout should be trusted (the page says so first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.reporting import html as h

METRICS = ("ctr", "add_to_cart_rate", "conversion", "revenue_per_user")
LABELS = {"ctr": "CTR (clicked shown items / impressions)", "add_to_cart_rate": "add-to-cart rate",
          "conversion": "conversion", "revenue_per_user": "revenue per exposed user"}
#: A sample-ratio mismatch is declared below this p-value (the usual, strict threshold: SRM tests run often).
SRM_ALPHA = 0.001
SECTIONS = ("summary", "srm", "metrics", "plot-intervals", "daily", "plot-daily")


def user_frame(url: str, since: date, until: date | None = None) -> pd.DataFrame:
    """Per (arm, user): impressions, clicked shown items, carted, purchased, revenue over ``[since, until)``."""
    from pipeline.db.engine import connect

    q = ("SELECT variant, user_id, sum(impressions)::bigint, sum(clicked_items)::bigint, bool_or(carted), "
         "bool_or(purchased), sum(revenue)::float8, max(arms) FROM recsys.ab_user_daily "
         "WHERE day >= %s AND (%s::date IS NULL OR day < %s::date) GROUP BY variant, user_id")
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(q, (since, until, until))
        rows = cur.fetchall()
    cols = ["variant", "user_id", "impressions", "clicks", "carted", "purchased", "revenue", "arms"]
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({"impressions": "int64", "clicks": "int64", "carted": bool, "purchased": bool,
                      "revenue": "float64"}) if len(df) else df


def daily_frame(url: str, since: date, until: date | None = None) -> pd.DataFrame:
    """``recsys.ab_daily`` rows of the period."""
    from pipeline.db.engine import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT day, variant, exposed_users, impressions, clicks, ctr, add_to_cart_rate, conversion, "
                    "revenue_per_user, users_in_several_arms FROM recsys.ab_daily WHERE day >= %s "
                    "AND (%s::date IS NULL OR day < %s::date) ORDER BY day, variant", (since, until, until))
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def arm_stats(users: pd.DataFrame) -> pd.DataFrame:
    """Per arm: exposed users and each metric with the variance of its estimate."""
    rows = []
    for arm, g in users.groupby("variant", sort=True):
        n = len(g)
        imp, clk = g["impressions"].to_numpy(float), g["clicks"].to_numpy(float)
        ctr = clk.sum() / max(imp.sum(), 1.0)
        # delta method for a ratio of means: Var(R) ~ (var(c) - 2R cov(c, i) + R^2 var(i)) / (n mean(i)^2)
        cov = np.cov(clk, imp, ddof=1) if n > 1 else np.zeros((2, 2))
        var_ctr = (cov[0, 0] - 2 * ctr * cov[0, 1] + ctr ** 2 * cov[1, 1]) / (n * max(imp.mean(), 1e-12) ** 2)
        row = {"variant": arm, "exposed_users": n, "impressions": int(imp.sum()), "clicks": int(clk.sum()),
               "ctr": ctr, "var_ctr": var_ctr}
        for m, col in (("add_to_cart_rate", "carted"), ("conversion", "purchased"), ("revenue_per_user", "revenue")):
            x = g[col].to_numpy(float)
            row[m] = x.mean()
            row[f"var_{m}"] = x.var(ddof=1) / n if n > 1 else np.nan
        row["revenue"] = float(g["revenue"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _boot(users: pd.DataFrame, arm: str, control: str, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap draws of each metric's difference (arm - control), Poisson weights per user."""
    rng = np.random.default_rng(seed)
    out = {}
    draws = {}
    for name in (arm, control):
        g = users[users["variant"] == name]
        w = rng.poisson(1.0, (n_boot, len(g))).astype(float)
        tot = np.maximum(w.sum(axis=1), 1.0)
        imp, clk = g["impressions"].to_numpy(float), g["clicks"].to_numpy(float)
        draws[name] = {"ctr": (w @ clk) / np.maximum(w @ imp, 1.0),
                       "add_to_cart_rate": (w @ g["carted"].to_numpy(float)) / tot,
                       "conversion": (w @ g["purchased"].to_numpy(float)) / tot,
                       "revenue_per_user": (w @ g["revenue"].to_numpy(float)) / tot}
    for m in METRICS:
        out[m] = draws[arm][m] - draws[control][m]
    return out


def differences(users: pd.DataFrame, stats: pd.DataFrame, control: str, *, method: str = "delta",
                level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each other arm against ``control``: difference, interval, relative lift, and whether zero is outside."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    by = stats.set_index("variant")
    rows = []
    for arm in by.index:
        if arm == control:
            continue
        boot = _boot(users, arm, control, n_boot, seed) if method == "bootstrap" else None
        for m in METRICS:
            d = float(by.at[arm, m] - by.at[control, m])
            if boot is not None:
                lo, hi = (float(x) for x in np.quantile(boot[m], [(1 - level) / 2, (1 + level) / 2]))
            else:
                se = float(np.sqrt(by.at[arm, f"var_{m}"] + by.at[control, f"var_{m}"]))
                lo, hi = d - z * se, d + z * se
            base = float(by.at[control, m])
            rows.append({"variant": arm, "metric": m, "control": base, "value": float(by.at[arm, m]),
                         "diff": d, "ci_low": lo, "ci_high": hi,
                         "lift": d / base if base else np.nan,
                         "significant": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows)


def srm_check(counts: Mapping[str, int], expected: Mapping[str, float] | None = None) -> dict:
    """Chi-square test of users per arm against the ``expected`` split (shares; default equal)."""
    from scipy.stats import chisquare

    arms = sorted(counts)
    obs = np.array([counts[a] for a in arms], dtype=float)
    w = np.array([float((expected or {}).get(a, 1.0 if not expected else 0.0)) for a in arms])
    if len(arms) < 2 or w.sum() <= 0 or obs.sum() == 0:
        return {"arms": arms, "observed": obs.astype(int).tolist(), "p_value": None, "mismatch": False,
                "note": "fewer than two arms with a declared share: nothing to compare"}
    exp = obs.sum() * w / w.sum()
    if (exp == 0).any():  # an arm that should get no traffic but got some: a mismatch by definition
        return {"arms": arms, "observed": obs.astype(int).tolist(), "expected": exp.tolist(), "chi2": None,
                "p_value": 0.0, "mismatch": True, "note": "users in an arm with no declared share"}
    chi2, p = chisquare(obs, exp)
    return {"arms": arms, "observed": obs.astype(int).tolist(), "expected": exp.round(1).tolist(),
            "chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < SRM_ALPHA)}


@dataclass
class Readout:
    """The readout of one period: per-arm figures, differences against the control, SRM, daily rows."""

    since: date
    until: date | None
    control: str
    method: str
    level: float
    arms: pd.DataFrame
    diffs: pd.DataFrame
    srm: dict
    daily: pd.DataFrame
    users_in_several_arms: int = 0
    notes: list[str] = field(default_factory=list)

    def winner(self, metric: str = "ctr") -> str | None:
        """The arm whose ``metric`` beats every other arm's with an interval excluding zero (None: no winner
        named, e.g. all intervals cover zero, or the SRM check failed)."""
        if self.srm.get("mismatch") or self.diffs.empty:
            return None
        d = self.diffs[self.diffs["metric"] == metric]
        better = d[d["significant"] & (d["diff"] > 0)].sort_values("diff", ascending=False)
        if len(better):
            return str(better.iloc[0]["variant"])
        if len(d) and (d["significant"] & (d["diff"] < 0)).all():
            return self.control
        return None

    def to_dict(self) -> dict:
        return {"since": str(self.since), "until": None if self.until is None else str(self.until),
                "control": self.control, "method": self.method, "level": self.level,
                "arms": self.arms.drop(columns=[c for c in self.arms if c.startswith("var_")]).to_dict("records"),
                "differences": self.diffs.to_dict("records"), "srm": self.srm,
                "winner": {m: self.winner(m) for m in METRICS}, "users_in_several_arms": self.users_in_several_arms,
                "notes": self.notes}


def readout(url: str, since: date, until: date | None = None, *, control: str | None = None,
            expected: Mapping[str, float] | None = None, method: str = "delta", level: float = 0.95,
            n_boot: int = 2000, seed: int = 0) -> Readout:
    """The readout of ``[since, until)`` from the database (see the module docstring)."""
    from pipeline.errors import ConfigError, InputDataError

    if method not in ("delta", "bootstrap"):
        raise ConfigError(f"unknown interval method {method!r}", "delta or bootstrap")
    users = user_frame(url, since, until)
    if users.empty:
        raise InputDataError(f"no impressions since {since} in shop.impressions",
                             "load them (`rerank impressions import`) or pick an earlier --since")
    stats = arm_stats(users)
    arms = stats["variant"].tolist()
    control = control or ("control" if "control" in arms else arms[0])
    if control not in arms:
        raise ConfigError(f"control arm {control!r} has no exposed users since {since}", f"one of {arms}")
    notes = []
    if expected is None:
        expected = declared_split(arms)
    srm = srm_check(dict(zip(stats["variant"], stats["exposed_users"], strict=True)), expected)
    per_user = users.groupby("user_id").agg(n=("variant", "nunique"), arms=("arms", "max"))
    several = int(((per_user["n"] > 1) | (per_user["arms"] > 1)).sum())
    if several:
        notes.append(f"{several} users were shown more than one arm: the assignment is not sticky")
    return Readout(since, until, control, method, level, stats,
                   differences(users, stats, control, method=method, level=level, n_boot=n_boot, seed=seed),
                   srm, daily_frame(url, since, until), several, notes)


def declared_split(arms: list[str]) -> dict[str, float]:
    """The RERANK_VARIANTS weights of ``arms`` when the settings declare them all, else an equal split."""
    from pipeline.settings import get_settings

    declared = {str(k): float(dict(v).get("weight", 0.0)) for k, v in (get_settings().variants or {}).items()}
    if declared and all(a in declared for a in arms):
        return {a: declared[a] for a in arms}
    return {a: 1.0 for a in arms}


# -- the page ------------------------------------------------------------------------------------------------
def _plot_intervals(r: Readout) -> str:
    pyplot = h.plt()
    d = r.diffs
    if d.empty:
        return "<p>only one arm: nothing to compare</p>"
    fig, axes = pyplot.subplots(1, len(METRICS), figsize=(12, 1.2 + 0.5 * d["variant"].nunique()))
    for ax, m in zip(axes, METRICS, strict=True):
        g = d[d["metric"] == m].reset_index(drop=True)
        y = np.arange(len(g))
        ax.errorbar(g["diff"], y, xerr=[g["diff"] - g["ci_low"], g["ci_high"] - g["diff"]], fmt="o", capsize=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, g["variant"])
        ax.set_title(LABELS[m], fontsize=9)
    fig.suptitle(f"difference against {r.control} ({int(r.level * 100)}% interval, {r.method})")
    return h.png(fig, "differences with intervals")


def _plot_daily(r: Readout) -> str:
    pyplot = h.plt()
    if r.daily.empty:
        return "<p>no daily rows</p>"
    cols = ["exposed_users", *METRICS]
    fig, axes = pyplot.subplots(1, len(cols), figsize=(14, 3))
    for ax, c in zip(axes, cols, strict=True):
        for arm, g in r.daily.groupby("variant"):
            ax.plot(pd.to_datetime(g["day"]), g[c].astype(float), marker="o", label=arm)
        ax.set_title(c, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0].legend(fontsize=8)
    return h.png(fig, "daily figures per arm")


def render(r: Readout) -> str:
    """The readout as one HTML page (sections: :data:`SECTIONS`)."""
    srm = r.srm
    if srm.get("mismatch"):
        verdict = (f'<p class="alert">Sample ratio mismatch (p = {srm["p_value"]:.2g} &lt; {SRM_ALPHA}): the split '
                   "of exposed users is not the declared one. Do not read the metrics below until the assignment "
                   "or the logging is fixed.</p>")
    else:
        names = {m: r.winner(m) for m in METRICS}
        verdict = "<ul>" + "".join(
            f"<li>{h.esc(LABELS[m])}: " + (f'<span class="ok">{h.esc(w)} is better</span>' if w
                                           else "no arm is better at this level") + "</li>"
            for m, w in names.items()) + "</ul>"
    summary = (f"<p>period {h.esc(r.since)} to {h.esc(r.until or 'now')}; control arm <b>{h.esc(r.control)}</b>; "
               f"{int(r.level * 100)}% intervals by the {h.esc(r.method)} method; unit: the exposed user.</p>"
               + verdict + "".join(f'<p class="warn">{h.esc(n)}</p>' for n in r.notes))
    srm_body = (f"<p>users per arm {dict(zip(srm['arms'], srm['observed'], strict=True))}, expected "
                f"{srm.get('expected')}, chi-square p-value {srm.get('p_value')}; mismatch when p &lt; {SRM_ALPHA}: "
                + ('<span class="alert">MISMATCH</span>' if srm.get("mismatch") else '<span class="ok">ok</span>')
                + "</p>")
    arms = r.arms[["variant", "exposed_users", "impressions", "clicks", *METRICS, "revenue"]]
    diffs = r.diffs.assign(ci=lambda d: "[" + d["ci_low"].map("{:.4f}".format) + ", "
                           + d["ci_high"].map("{:.4f}".format) + "]") if len(r.diffs) else r.diffs
    if len(diffs):
        diffs = diffs[["variant", "metric", "control", "value", "diff", "ci", "lift", "significant"]]
    sections = [
        h.section("summary", "Summary", summary),
        h.section("srm", "Sample ratio check", srm_body),
        h.section("metrics", "Per arm and against the control", h.table(arms) + h.table(diffs)),
        h.section("plot-intervals", "Differences with intervals", _plot_intervals(r)),
        h.section("daily", "Per day (recsys.ab_daily)", h.table(r.daily)),
        h.section("plot-daily", "Daily figures", _plot_daily(r)),
    ]
    return h.page("A/B readout", sections, f"since {r.since}")


def write_report(r: Readout, out_dir: str | Path) -> dict[str, str]:
    """``out_dir/ab_report.html`` and ``out_dir/ab_report.json``; returns their paths."""
    from pipeline.files import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "ab_report.html", render(r))
    write_text(out / "ab_report.json", json.dumps(r.to_dict(), indent=2, default=str))
    return {"html": str(out / "ab_report.html"), "json": str(out / "ab_report.json")}
