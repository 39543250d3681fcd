"""The two nightly stages of the ranker: ``train_ranker`` and ``evaluate_gate`` (plain functions, no Airflow).

Time layout of a run with ``as_of``: the holdout is ``[t, as_of)`` with ``t = as_of - 1 day``; training
windows are the ``n_windows`` days before ``t``, each point-in-time correct (features before its cut-off,
labels after it). The gate scores the candidate and the champion on the same holdout (candidates and
features from events before ``t``) and promotes the candidate only if its nDCG@10 is not worse than the
champion's by more than ``tolerance``. Lists are ranked by the fused score P_recall * P_rank, as published.
Before the windows are built, recall's priors (P_recall's source weights) may be tuned on the same holdout
(``RERANK_TUNE_PRIORS``, :mod:`pipeline.rank.tune`); the windows, the holdout and the model then use them.

Both stages read only the events of a bounded sample of users (``RERANK_RANK_SAMPLE_USERS``, drawn by
:func:`pipeline.rank.data.user_sample` from the run's seed): the same users for the training windows, the
holdout and the gate, on every re-run, whatever the size of the shop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import runs
from pipeline.errors import ModelError
from pipeline.files import write_text
from pipeline.frames import pair_index
from pipeline.metrics import paired_lower_bound
from pipeline.rank.data import Window, build_window, daily_windows, recall_candidate_fn, user_sample
from pipeline.rank.features import item_stats_at, load_item_embeddings
from pipeline.rank.model import RankerConfig, RankerModel
from pipeline.rank.registry import champion, get_model_row, promote, register_candidate, update_metrics
from pipeline.rank.tune import tune_priors

log = logging.getLogger(__name__)

RESULT_FILE = "ranker.json"
GATE_K = 10


def _snapshot(home: str | Path, run_id: str) -> Path:
    return runs.run_dir(home, run_id) / "snapshot"


@dataclass(frozen=True)
class Sample:
    """The users the ranker trains and is gated on: ``users`` of the shop's ``of`` users."""

    users: np.ndarray
    of: int
    seed: int

    @property
    def scale(self) -> float:
        """Factor from the sample's item counts to the shop's (1.0 when every user is in)."""
        return self.of / max(len(self.users), 1)

    def describe(self) -> dict:
        return {"users": int(len(self.users)), "of": int(self.of), "seed": int(self.seed)}


def training_sample(snap: Path, n: int, seed: int) -> Sample:
    """At most ``n`` of the snapshot's users, by a hash of (``seed``, user id); see ``user_sample``."""
    users = pd.read_parquet(snap / "users.parquet", columns=["user_id"])["user_id"].to_numpy(dtype=np.int64)
    return Sample(user_sample(users, n, seed), len(np.unique(users)), seed)


def _load(snap: Path, sample: Sample | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The snapshot's events (only the ``sample``'s users' when it leaves anyone out), items, embeddings."""
    from pipeline.extract.snapshot import read_events, read_snapshot

    if sample is None or len(sample.users) >= sample.of:
        events, items, _ = read_snapshot(snap)
    else:
        events = read_events(snap, filters=[("user_id", "in", sample.users.tolist())])
        if len(events):
            events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
        items = pd.read_parquet(snap / "items.parquet")
    if len(events):
        events = events.assign(ts=pd.to_datetime(events["ts"], utc=True))
    return events, items, load_item_embeddings(str(snap / "item_embeddings.parquet"))


def _impressions(snap: Path, sample: Sample, events: pd.DataFrame,
                 before: datetime) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """The sample's impressions from the snapshot (None without any) and the examination propensity by rank
    estimated from those before ``before`` (the holdout's start: the gate's day stays unseen)."""
    from pipeline.extract.impressions import read_impressions
    from pipeline.rank.data import position_propensity

    users = None if len(sample.users) >= sample.of else sample.users.tolist()
    shown = read_impressions(snap, users)
    if shown is None:
        return None, None
    early = shown[shown["ts"] < pd.Timestamp(before)]
    return shown, position_propensity(early, events[events["ts"] < pd.Timestamp(before)])


def item_feats_at(items: pd.DataFrame, history: pd.DataFrame, cutoff: datetime, config: RankerConfig,
                  scale: float = 1.0) -> pd.DataFrame:
    """Catalogue side features + item statistics from events before ``cutoff`` (what scoring reads);
    ``scale``: ``history`` holds a sample of the users (see ``item_stats_at``)."""
    stats = item_stats_at(history, cutoff, config.event_weights, config.half_life_days, scale)
    cols = [c for c in ("item_id", "category", "brand", "price") if c in items.columns]
    out = items[cols].join(stats[["activity", "recent_events", "trend"]], on="item_id")
    return out.fillna({"activity": 0.0, "recent_events": 0.0, "trend": 0.1})


def _fused(model: RankerModel | None, win: Window, items: pd.DataFrame, emb: pd.DataFrame | None,
           config: RankerConfig | None) -> pd.DataFrame:
    """The holdout candidates' fused scores (P_recall * P_rank; P_rank = 1 without a model)."""
    cand = win.candidates
    cfg = config or (model.config if model is not None else RankerConfig())
    p_rank = np.ones(len(cand)) if model is None else model.score(
        cand, win.history, item_feats_at(items, win.history, win.cutoff, cfg, win.stat_scale), win.cutoff,
        emb=emb)
    return pd.DataFrame({"user_id": cand["user_id"].to_numpy(), "item_id": cand["item_id"].to_numpy(),
                         "score": cand["p_recall"].to_numpy(dtype=np.float64) * p_rank})


def per_user_ndcg(model: RankerModel | None, win: Window, items: pd.DataFrame, *, k: int = GATE_K,
                  emb: pd.DataFrame | None = None, config: RankerConfig | None = None) -> pd.Series:
    """nDCG@k of each labelled holdout user's fused list (0 for a user without candidates), by user id."""
    from pipeline.metrics import per_user_ranking

    users = np.unique(win.labels["user_id"].to_numpy()) if len(win.labels) else np.zeros(0, dtype=np.int64)
    if not len(win.candidates) or not len(users):
        return pd.Series(0.0, index=users, dtype="float64")
    recs = _fused(model, win, items, emb, config)
    recs = recs[recs["user_id"].isin(users)].sort_values(["user_id", "score", "item_id"],
                                                         ascending=[True, False, True], kind="stable")
    recs = recs.assign(rank=recs.groupby("user_id").cumcount() + 1)
    per = per_user_ranking(win.labels[["user_id", "item_id"]], recs, k)
    return per.set_index("user_id")["ndcg"].astype("float64").reindex(users, fill_value=0.0)


def holdout_metrics(model: RankerModel | None, win: Window, items: pd.DataFrame, *, k: int = GATE_K,
                    emb: pd.DataFrame | None = None, config: RankerConfig | None = None) -> dict[str, float]:
    """nDCG@k / HR@k of the fused lists (P_recall * P_rank) on a holdout window; ``model=None``: recall only.

    Every labelled user counts; positives that recall missed count as misses (both models share them).
    ``*_new``: the same on discovery alone, the labels on items the user had no event with before the
    cut-off, against the lists without those items (users with such a label): the gate judges every
    intent, and a model can win there by re-finding seen items while ordering new ones worse.
    """
    cand = win.candidates
    if not len(cand) or not len(win.labels):
        return {f"ndcg@{k}": 0.0, f"hr@{k}": 0.0, "users": 0, f"ndcg@{k}_new": 0.0, f"hr@{k}_new": 0.0,
                "users_new": 0}
    recs = _fused(model, win, items, emb, config)
    out = _list_metrics(recs, win.labels, k)
    seen = pair_index(win.history[win.history["item_id"].notna()])
    new = _list_metrics(recs[~pair_index(recs).isin(seen)], win.labels[~pair_index(win.labels).isin(seen)], k)
    return {**out, f"ndcg@{k}_new": new[f"ndcg@{k}"], f"hr@{k}_new": new[f"hr@{k}"], "users_new": new["users"]}


def _list_metrics(recs: pd.DataFrame, labels: pd.DataFrame, k: int) -> dict[str, float]:
    """nDCG@k / HR@k of ``recs`` (user_id, item_id, score) against ``labels``, over every labelled user."""
    from pipeline.metrics import ranking_metrics

    n_users = labels["user_id"].nunique()
    recs = recs[recs["user_id"].isin(labels["user_id"])]
    if not n_users or recs.empty:
        return {f"ndcg@{k}": 0.0, f"hr@{k}": 0.0, "users": int(n_users)}
    recs = recs.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable")
    recs = recs.assign(rank=recs.groupby("user_id").cumcount() + 1)
    # Users without any candidate still count (nDCG 0): add them with an empty list by averaging by hand.
    m = ranking_metrics(labels[["user_id", "item_id"]], recs, k)
    share = recs["user_id"].nunique() / n_users
    return {f"ndcg@{k}": float(m["ndcg"]) * share, f"hr@{k}": float(m["hr"]) * share, "users": int(n_users)}


def _recall_params(n_candidates: int | None = None) -> dict:
    from pipeline.settings import get_settings

    s = get_settings()
    return {"n_candidates": int(n_candidates or s.candidates), "recent_days": int(s.recent_days),
            "weights": dict(s.event_weights), "half_life_days": dict(s.half_life_days), "decay_from": s.decay_from,
            "als": {"seed": int(s.seed), "weighting": s.als_weighting, "factors": int(s.als_factors)},
            "priors": dict(s.recall_priors), "seq_k": int(s.seq_neighbours), "chunk_users": int(s.shard_users),
            "itemcf_algorithm": s.itemcf_algorithm}


def _holdout(events: pd.DataFrame, items: pd.DataFrame, as_of: datetime, recall: dict,
             stat_scale: float = 1.0, *, source_mask: bool = False, snap: Path | None = None) -> Window:
    _, (t, end) = daily_windows(as_of, 0)
    return build_window(events, t, end, recall_candidate_fn(items, **recall, source_mask=source_mask,
                                                            snapshot_dir=snap), stat_scale=stat_scale)


def _weights_digest(model: RankerModel) -> str:
    """8 hex digits of the trained weights and calibration (what ``score`` computes with)."""
    h = hashlib.sha256()
    for k, v in sorted(model.net.state_dict().items()) if model.net is not None else []:
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(list(model.calibration)).encode())
    return h.hexdigest()[:8]


def train_ranker(url: str, home: str, run_id: str, as_of: datetime, *, retrain: bool = True, device: str = "auto",
                 seed: int = 42, n_windows: int = 7, config: RankerConfig | None = None,
                 n_candidates: int | None = None, sample_users: int | None = None) -> dict:
    """Train a candidate on the run's snapshot, save it under RERANK_HOME/models/<version>, register it.
    ``sample_users``: at most this many users' events make the training set (RERANK_RANK_SAMPLE_USERS)."""
    out_file = runs.run_dir(home, run_id) / RESULT_FILE
    champ = champion(url)
    if not retrain:
        res = {"model_version": champ["model_version"] if champ else "recall-only", "trained": False,
               "reason": "retrain not requested; the champion keeps scoring"}
        write_text(out_file, json.dumps(res))
        return res
    from pipeline.settings import get_settings

    s = get_settings()
    cfg = config or RankerConfig(seed=seed, event_weights=dict(s.event_weights),
                                 half_life_days=dict(s.half_life_days))
    recall = _recall_params(n_candidates)
    snap = _snapshot(home, run_id)
    t0 = time.perf_counter()
    sample = training_sample(snap, sample_users or s.rank_sample_users, seed)
    events, items, emb = _load(snap, sample)
    tuning = None
    if s.tune_priors:  # recall's priors first: the training windows and the holdout fuse with what scoring uses
        # (the holdout is built again after training: kept, its candidates would sit beside the windows')
        tuning = tune_priors(_holdout(events, items, as_of, recall, sample.scale, source_mask=True, snap=snap),
                             recall["priors"], confidence=s.gate_confidence, seed=seed)
        recall = {**recall, "priors": tuning.priors}
    tuning_report = {"prior_tuning": tuning.report} if tuning is not None else {}
    fn = recall_candidate_fn(items, **recall, snapshot_dir=snap)  # every source scoring has, content included
    first_ts = events["ts"].min() if len(events) else None
    train_days, (hold_start, _) = daily_windows(as_of, n_windows)
    shown, propensity = _impressions(snap, sample, events, hold_start)
    windows = [build_window(events, c, e, fn, stat_scale=sample.scale, impressions=shown, propensity=propensity)
               for c, e in train_days
               if first_ts is not None and pd.Timestamp(c) > first_ts]
    windows = [w for w in windows if len(w.labels)]
    if not windows:
        res = {"model_version": champ["model_version"] if champ else "recall-only", "trained": False,
               "reason": "no labelled training window (too few days of click/cart/purchase events)",
               "recall": recall, **tuning_report}
        write_text(out_file, json.dumps(res, default=str))
        return res
    data_s = time.perf_counter() - t0
    model = RankerModel(cfg).fit(windows, items, emb=emb, device=device)
    train_s = time.perf_counter() - t0 - data_s
    hold = _holdout(events, items, as_of, recall, sample.scale, snap=snap)
    cand_m = holdout_metrics(model, hold, items, emb=emb)
    base_m = holdout_metrics(None, hold, items)
    # The weights are part of the name: a re-run that reproduces the model lands on the same row and files,
    # one that does not (late events, GPU non-determinism) is a new candidate for the gate. Named by the
    # config alone, a re-run rewrote the champion's files in place with weights the gate never saw.
    version = f"ranker-{pd.Timestamp(as_of):%Y%m%dT%H%M}-{model.config_digest[:8]}-{_weights_digest(model)}"
    model.version = version
    model.metrics.update({"holdout": cand_m, "recall_only": base_m, "windows": len(windows),
                          "recall_priors": dict(recall["priors"]),
                          "holdout_cutoff": hold.cutoff.isoformat(), "data_seconds": round(data_s, 3),
                          "train_seconds": round(train_s, 3)})
    artifact = Path(home).expanduser().resolve() / "models" / version
    model.save(artifact)
    metrics = {f"ndcg@{GATE_K}": cand_m[f"ndcg@{GATE_K}"], f"hr@{GATE_K}": cand_m[f"hr@{GATE_K}"],
               f"recall_only_ndcg@{GATE_K}": base_m[f"ndcg@{GATE_K}"], "holdout_users": cand_m["users"],
               f"ndcg@{GATE_K}_new": cand_m[f"ndcg@{GATE_K}_new"],
               f"recall_only_ndcg@{GATE_K}_new": base_m[f"ndcg@{GATE_K}_new"], "holdout_users_new": cand_m["users_new"],
               "holdout": [hold.cutoff.isoformat(), hold.end.isoformat()], "config_digest": model.config_digest,
               "epochs": model.metrics["epochs"], "device": model.metrics["device"],
               "train_groups": model.metrics["train_groups"], "windows": len(windows),
               "impressions": 0 if shown is None else len(shown), "recall_priors": dict(recall["priors"])}
    reg = register_candidate(url, version, str(artifact), metrics, run_id=run_id)
    res = {"model_version": version, "trained": True, "status": reg["status"], "artifact_uri": str(artifact),
           "recall": recall, **metrics, "train_seconds": round(train_s, 3), "sample": sample.describe(),
           "data_seconds": round(data_s, 3), **tuning_report}
    write_text(out_file, json.dumps(res, default=str))
    return res


def evaluate_gate(url: str, home: str, run_id: str, as_of: datetime, *, tolerance: float = 0.01,
                  recall_margin: float = 0.0, confidence: float = 0.0) -> dict:
    """Promote this run's candidate if its holdout nDCG@10 is at least recall-only ordering's + ``recall_margin``
    and at least the champion's - ``tolerance`` (the same holdout for all three). ``recall_margin=-1`` leaves
    recall-only out of the judgement (nDCG lies in [0, 1]). ``confidence`` > 0: the candidate must also be
    shown better than recall-only: the paired bootstrap's lower bound of the per-user gain at that confidence
    above ``recall_margin`` (a holdout of few users then keeps recall-only ordering)."""
    from pipeline.rank.score import load_model

    out_file = runs.run_dir(home, run_id) / RESULT_FILE
    trained = json.loads(out_file.read_text()) if out_file.exists() else {}
    champ = champion(url)
    base = {"tolerance": tolerance, "champion": champ["model_version"] if champ else None}
    if not trained.get("trained"):
        return {**base, "promoted": False, "candidate": None,
                "reason": trained.get("reason", "no candidate was trained in this run")}
    version = trained["model_version"]
    row = get_model_row(url, version)
    if row is None:
        raise ModelError(f"candidate {version} is not in recsys.models", "run train_ranker again")
    if champ and champ["model_version"] == version:
        return {**base, "promoted": False, "candidate": version, "reason": "the candidate is already champion"}
    if (row.get("metrics") or {}).get("rolled_back"):
        # An operator took this model out of service; a repeated run must not put it back on its own.
        return {**base, "promoted": False, "candidate": version,
                "reason": f"{version} was rolled back; `rerank models promote {version}` restores it by hand"}
    snap = _snapshot(home, run_id)
    drawn = trained.get("sample")  # the users the candidate was trained and measured on
    sample = training_sample(snap, drawn["users"], drawn["seed"]) if drawn else None
    events, items, emb = _load(snap, sample)
    hold = _holdout(events, items, as_of, trained["recall"], sample.scale if sample else 1.0, snap=snap)
    key = f"ndcg@{GATE_K}"
    # The process's own thread count: load_model otherwise sizes torch for a scoring worker, and a later
    # training in this process (the next nightly in a long-lived scheduler) would then sum differently.
    import torch

    cand_model = load_model(row["artifact_uri"], threads=torch.get_num_threads())
    cand_score = holdout_metrics(cand_model, hold, items, emb=emb)[key]
    base_score = holdout_metrics(None, hold, items)[key]
    verdict: dict = {"tolerance": tolerance, "candidate_ndcg@10": cand_score, "recall_only_ndcg@10": base_score,
                     "holdout": trained.get("holdout")}
    lower = None
    if confidence > 0 and recall_margin > -1:
        lower = paired_lower_bound(per_user_ndcg(cand_model, hold, items, emb=emb), per_user_ndcg(None, hold, items),
                                   confidence=confidence)
        verdict.update({"gain_lower_bound": lower, "confidence": confidence,
                        "holdout_users": int(hold.labels["user_id"].nunique()) if len(hold.labels) else 0})
    if lower is not None and lower < recall_margin and cand_score >= base_score + recall_margin:
        decision, reason = False, (f"candidate nDCG@10 {cand_score:.4f} vs recall-only {base_score:.4f} on "
                                   f"{verdict['holdout_users']} holdout users: gain not shown at {confidence:.0%} "
                                   f"(lower bound {lower:+.4f}): not promoted")
    elif cand_score < base_score + recall_margin:
        # the fused lists must beat recall's own order, the first model included: else scoring goes recall-only
        decision, reason = False, (f"candidate nDCG@10 {cand_score:.4f} below recall-only {base_score:.4f} "
                                   f"(margin {recall_margin}): not promoted")
    elif champ is None:
        decision, reason = True, "no champion yet: the first model becomes champion"
    else:
        try:
            champ_model = RankerModel.load(champ["artifact_uri"])
        except ModelError as exc:
            champ_model = None
            log.warning("champion %s cannot be loaded: %s", champ["model_version"], exc)
        if champ_model is None:
            decision, reason = True, f"champion {champ['model_version']} has no loadable artefact"
        else:
            champ_score = holdout_metrics(champ_model, hold, items, emb=emb)[key]
            verdict["champion_ndcg@10"] = champ_score
            decision = cand_score >= champ_score - tolerance
            reason = (f"candidate nDCG@10 {cand_score:.4f} vs champion {champ_score:.4f} "
                      f"(tolerance {tolerance}): " + ("promoted" if decision else "kept the champion"))
    verdict.update({"gate_passed": decision, "gate_reason": reason, "gate_run_id": run_id})
    update_metrics(url, version, verdict)
    if decision:
        promote(url, version)
    return {**base, "promoted": decision, "candidate": version, "reason": reason,
            **{k: v for k, v in verdict.items() if k.endswith("ndcg@10") or k in ("gain_lower_bound", "holdout_users")}}
