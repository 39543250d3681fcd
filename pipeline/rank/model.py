"""The ranker's one model contract: ``fit`` / ``score`` / ``save`` / ``load``.

- ``fit(windows, items)`` trains on point-in-time windows (:mod:`pipeline.rank.data`) with a softmax
  cross-entropy over 1 positive + K sampled negatives per group (``loss="bce"``: binary CE per row), on
  the device from :func:`resolve_device` (bf16 autocast on CUDA), fixed seeds, early stopping on a
  held-out share of users, and a Platt calibration so that ``score`` returns a probability usable in
  the fusion ``P_recall * P_rank``.
- ``score(cand, events, item_feats, as_of)`` returns P_rank per candidate row (CPU, inference mode, users'
  candidates packed into ``U x C`` blocks so each sequence is encoded once).
- ``save(dir)`` writes ``model.safetensors`` (weights + item vocabulary) and ``model.json`` (config,
  feature schema, calibration, library versions, config digest); ``load(dir)`` checks the digest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.errors import ModelError, NonFiniteWeightsError
from pipeline.rank.data import Groups, Window, sample_groups
from pipeline.rank.features import (
    AFFINITY_FEATURES,
    CONTENT_FEATURES,
    PROFILE_COLUMNS,
    PROFILE_FEATURES,
    FeatureSpace,
    UserAffinity,
    UserProfile,
    candidate_tensors,
    embedding_matrix,
    item_stats_at,
    user_profile_at,
    user_sequences,
)
from pipeline.rank.net import NetConfig, RankerNet

log = logging.getLogger(__name__)

FORMAT = "ecom-rerank/ranker"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
_DEFAULT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
_DEFAULT_HALF_LIFE = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}


@dataclass(frozen=True)
class RankerConfig:
    """Hyper-parameters (every one enters the config digest)."""

    dim: int = 32
    heads: int = 2
    layers: int = 1
    hidden: int = 64
    dropout: float = 0.1
    seq_len: int = 50
    n_recall_neg: int = 12
    n_random_neg: int = 4
    #: With impressions: up to this many of the recall negatives are shown-and-not-clicked items, and shown
    #: positives are weighted by the inverse propensity of their rank, capped at ``ipw_clip``.
    n_shown_neg: int = 6
    ipw_clip: float = 10.0
    loss: str = "softmax"  # "softmax" (CE over the group) | "bce"
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_groups: int = 256
    max_epochs: int = 20
    patience: int = 2
    val_share: float = 0.1
    seed: int = 42
    score_batch_rows: int = 32_768
    event_weights: dict = field(default_factory=lambda: dict(_DEFAULT_WEIGHTS))
    half_life_days: dict = field(default_factory=lambda: dict(_DEFAULT_HALF_LIFE))

    def __post_init__(self) -> None:
        if self.loss not in ("softmax", "bce"):
            raise ModelError(f"ranker: unknown loss {self.loss!r}", "loss is 'softmax' or 'bce'")
        if self.dim % self.heads:
            raise ModelError(f"ranker: dim {self.dim} is not a multiple of heads {self.heads}")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU fails fast (implicit's factory idea)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("RERANK_DEVICE=cuda but torch sees no CUDA device", "set RERANK_DEVICE=auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown device {device!r}", "RERANK_DEVICE is auto, cpu or cuda")
    return torch.device(device)


def library_versions() -> dict[str, str]:
    import safetensors

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "safetensors": getattr(safetensors, "__version__", "?")}


@dataclass
class Encoded:
    """Model inputs as numpy: sequences ``N x L``, candidates ``N x C`` (+ ``num`` / ``emb`` last dims)."""

    seq: dict[str, np.ndarray]
    cand: dict[str, np.ndarray]
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.weight)

    def take(self, idx: np.ndarray | slice) -> Encoded:
        return Encoded({k: v[idx] for k, v in self.seq.items()}, {k: v[idx] for k, v in self.cand.items()},
                       self.weight[idx])

    @staticmethod
    def concat(parts: Sequence[Encoded]) -> Encoded:
        return Encoded({k: np.concatenate([p.seq[k] for p in parts]) for k in parts[0].seq},
                       {k: np.concatenate([p.cand[k] for p in parts]) for k in parts[0].cand},
                       np.concatenate([p.weight for p in parts]))


def _to_torch(d: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in d.items()}


@dataclass
class UserBlocks:
    """Layout of candidate rows as ``U x C`` blocks: user ``u``'s rows fill ``block[u, :count[u]]`` (rest padding).

    When the rows are already grouped by user in user order and every user has the same count (recall's
    fixed top-N), a block is a reshaped view of the flat arrays: no copy, no padding.
    """

    users: np.ndarray  # sorted distinct user ids
    ucode: np.ndarray  # per row: index into ``users``
    pos: np.ndarray  # per row: slot in its user's block (rows keep their frame order within a user)
    order: np.ndarray | None  # rows grouped by user (None: the frame already is)
    starts: np.ndarray
    counts: np.ndarray
    width: int
    dense: bool

    @classmethod
    def of(cls, ucol: np.ndarray) -> UserBlocks:
        n = len(ucol)
        if n > 1 and bool((ucol[1:] < ucol[:-1]).any()):
            users, ucode = np.unique(ucol, return_inverse=True)
            order: np.ndarray | None = np.argsort(ucode, kind="stable")
        else:  # grouped and sorted: no sort needed
            first = np.r_[True, ucol[1:] != ucol[:-1]] if n else np.zeros(0, dtype=bool)
            users, ucode, order = ucol[first], np.cumsum(first) - 1, None
        counts = np.bincount(ucode, minlength=len(users))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.empty(n, dtype=np.int64)
        if order is None:
            pos[:] = np.arange(n) - starts[ucode]
        else:
            pos[order] = np.arange(n) - np.repeat(starts, counts)
        width = int(counts.max()) if n else 0
        return cls(users, ucode, pos, order, starts, counts, width,
                   dense=order is None and bool((counts == width).all()))

    def _rows(self, s: int, e: int) -> np.ndarray | slice:
        lo, hi = int(self.starts[s]), int(self.starts[e - 1] + self.counts[e - 1])
        return slice(lo, hi) if self.order is None else self.order[lo:hi]

    def block(self, v: np.ndarray, s: int, e: int) -> np.ndarray:
        """Users ``s:e`` of the per-row array ``v`` as ``(e - s) x width x ...``."""
        rows = self._rows(s, e)
        if self.dense:
            return v[rows].reshape(e - s, self.width, *v.shape[1:])
        b = np.zeros((e - s, self.width, *v.shape[1:]), dtype=v.dtype)
        b[self.ucode[rows] - s, self.pos[rows]] = v[rows]
        return b

    def put(self, out: np.ndarray, block: np.ndarray, s: int, e: int) -> None:
        """Write the ``(e - s) x width`` results of users ``s:e`` back to their rows of ``out``."""
        rows = self._rows(s, e)
        if self.dense:
            out[rows] = block.reshape(-1)
        else:
            out[rows] = block[self.ucode[rows] - s, self.pos[rows]]


class RankerModel:
    """The deep ranker (see module docstring for the contract)."""

    def __init__(self, config: RankerConfig | None = None) -> None:
        self.config = config or RankerConfig()
        self.space: FeatureSpace | None = None
        self.net: RankerNet | None = None
        self.calibration: tuple[float, float] = (1.0, 0.0)
        self.metrics: dict = {}
        self.history: list[dict] = []
        self._item_emb: np.ndarray | None = None
        #: (item features frame, its side table, its stats) of the last scoring call: a worker scores many
        #: shards against the same cached catalogue, and the side table costs the catalogue's size each time.
        self._catalogue: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = None
        #: The registry's model_version once registered or loaded from the registry.
        self.version: str | None = None

    # -- encoding -------------------------------------------------------------------------------------
    def _require(self) -> tuple[FeatureSpace, RankerNet]:
        if self.space is None or self.net is None:
            raise ModelError("ranker: the model is not fitted or loaded", "call fit() or RankerModel.load()")
        return self.space, self.net

    def _cand_emb(self, flat: dict[str, np.ndarray]) -> None:
        """No embedding frame at scoring: known items reuse the embeddings saved with the model."""
        if self.space is not None and self.space.embedding_dim and "emb" not in flat and self._item_emb is not None:
            flat["emb"] = self._item_emb[flat["item"]]

    def _affinity(self, events: pd.DataFrame, cutoff: datetime | None, side: pd.DataFrame) -> UserAffinity | None:
        """The users' affinities when the model's feature space uses them (models saved before do not)."""
        space = self.space
        if space is None or not set(space.numeric) & {*AFFINITY_FEATURES, *CONTENT_FEATURES}:
            return None
        return UserAffinity.of(events, cutoff, side, self.config.event_weights, self.config.half_life_days)

    def _profile(self, events: pd.DataFrame, users: np.ndarray, cutoff: datetime | None, items: pd.DataFrame,
                 user_feats: pd.DataFrame | None = None) -> UserProfile | None:
        """The users' :data:`PROFILE_FEATURES` when the model's feature space uses them: from ``user_feats``
        (the run's user_features rows, :data:`PROFILE_COLUMNS`) for the users it holds, the others computed
        from ``events`` before ``cutoff`` by the same functions (:func:`user_profile_at`)."""
        space = self.space
        if space is None or not set(space.numeric) & set(PROFILE_FEATURES):
            return None
        users = np.unique(np.asarray(users, dtype=np.int64))
        have = None
        if user_feats is not None and set(PROFILE_COLUMNS) <= set(user_feats.columns):
            have = user_feats.loc[user_feats["user_id"].isin(users), list(PROFILE_COLUMNS)]
        missing = users if have is None else np.setdiff1d(users, have["user_id"].to_numpy(dtype=np.int64))
        if len(missing) or have is None:
            cfg = self.config
            fresh = user_profile_at(events, missing, cutoff, items, cfg.event_weights, cfg.half_life_days)
            have = fresh if have is None or not len(have) else pd.concat([have, fresh], ignore_index=True)
        return UserProfile.of(have, items)

    def encode_groups(self, groups: Groups, history: pd.DataFrame, cutoff: datetime | None,
                      side: pd.DataFrame, stats: pd.DataFrame, emb: pd.DataFrame | None = None,
                      items: pd.DataFrame | None = None) -> Encoded:
        """Training groups -> ``Encoded`` (one sequence per group, C = 1 + K candidates). ``items``: the
        catalogue (item_id, price, category, brand) the profile features read (without: their prices unknown)."""
        space = self.space
        assert space is not None
        size, n = groups.size, len(groups.group_weight)
        seqs = user_sequences(history, groups.seq_users, cutoff, space)
        gseq = groups.rows["seq"].to_numpy(dtype=np.int64)[::size] if n else np.zeros(0, dtype=np.int64)
        profile = self._profile(history, groups.seq_users, cutoff,
                                items if items is not None else pd.DataFrame({"item_id": side.index}))
        flat = candidate_tensors(groups.rows, side, stats, space, emb, self._affinity(history, cutoff, side),
                                 profile)
        self._cand_emb(flat)
        cand = {k: v.reshape(n, size, *v.shape[1:]) for k, v in flat.items()}
        return Encoded({k: v[gseq] for k, v in seqs.items()}, cand, groups.group_weight.astype(np.float32))

    # -- training -------------------------------------------------------------------------------------
    def fit(self, windows: Sequence[Window], items: pd.DataFrame, *, emb: pd.DataFrame | None = None,
            device: str = "auto") -> RankerModel:
        """Train on point-in-time ``windows`` (labels after each cut-off, features before it)."""
        cfg = self.config
        if not windows or all(len(w.labels) == 0 for w in windows):
            raise ModelError("ranker: no labelled training windows", "the shop needs click/cart/purchase "
                             "events in the days before the holdout")
        seen = [w.history["item_id"].dropna().to_numpy(dtype=np.int64) for w in windows]
        seen += [w.labels["item_id"].to_numpy(dtype=np.int64) for w in windows]
        # Distinct values first: a Python loop over every candidate row's string took ~0.1 s per fit.
        sources = sorted({str(s) for w in windows if len(w.candidates)
                          for s in w.candidates["source"].dropna().unique()})
        emb_dim = 0
        if emb is not None and len(emb):
            emb_dim = int(len(np.asarray(emb["embedding"].iloc[0])))
        self.space = FeatureSpace.fit(items, np.concatenate(seen), sources, seq_len=cfg.seq_len,
                                      embedding_dim=emb_dim)
        space = self.space
        side = space.side_table(items)
        if emb_dim:
            self._item_emb = np.vstack([np.zeros((2, emb_dim), np.float32),
                                        embedding_matrix(emb, space.item_ids, emb_dim)])
        pool = items["item_id"].drop_duplicates().to_numpy(dtype=np.int64)
        parts = []
        for k, w in enumerate(windows):
            if not len(w.labels):
                continue
            g = sample_groups(w, pool, n_recall_neg=cfg.n_recall_neg, n_random_neg=cfg.n_random_neg,
                              seed=cfg.seed + k, n_shown_neg=cfg.n_shown_neg, ipw_clip=cfg.ipw_clip)
            stats = item_stats_at(w.history, w.cutoff, cfg.event_weights, cfg.half_life_days, w.stat_scale)
            parts.append((self.encode_groups(g, w.history, w.cutoff, side, stats, emb, items), g.group_user))
        data = Encoded.concat([p[0] for p in parts])
        users = np.concatenate([p[1] for p in parts])
        self._train(data, users, side, device)
        return self

    def _build_net(self, side: pd.DataFrame) -> RankerNet:
        space, cfg = self.space, self.config
        assert space is not None
        ncfg = NetConfig(n_items=space.n_items, n_cats=len(space.categories) + 2,
                         n_tops=len(space.top_categories) + 2, n_brands=len(space.brands) + 2,
                         n_prices=space.price_buckets(), n_sources=len(space.sources) + 2, n_gaps=space.n_gaps,
                         n_types=len(space.event_types) + 1, seq_len=space.seq_len, dim=cfg.dim, heads=cfg.heads,
                         layers=cfg.layers, hidden=cfg.hidden, dropout=cfg.dropout, n_numeric=len(space.numeric),
                         embedding_dim=space.embedding_dim)
        net = RankerNet(ncfg)
        known = side.reindex(space.item_ids)
        with torch.no_grad():
            for name in ("cat", "top", "brand", "price"):
                col = np.concatenate([[0, 0], known[name].fillna(0).to_numpy(dtype=np.int64)])
                getattr(net, f"item_{name}").copy_(torch.from_numpy(col))
            if space.embedding_dim and self._item_emb is not None:
                net.item_emb.copy_(torch.from_numpy(self._item_emb))
        return net

    def _loss(self, logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        w = weight / weight.mean().clamp_min(1e-6)
        if self.config.loss == "softmax":
            target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
            return (torch.nn.functional.cross_entropy(logits, target, reduction="none") * w).mean()
        y = torch.zeros_like(logits)
        y[:, 0] = 1.0
        rw = torch.ones_like(logits)
        rw[:, 0] = w
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=rw)

    def _train(self, data: Encoded, users: np.ndarray, side: pd.DataFrame, device: str) -> None:
        cfg = self.config
        dev = resolve_device(device)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        uniq = np.unique(users)
        n_val = int(round(len(uniq) * cfg.val_share)) if len(uniq) >= 10 else 0
        val_users = rng.choice(uniq, n_val, replace=False) if n_val else np.zeros(0, dtype=np.int64)
        is_val = np.isin(users, val_users)
        train, val = data.take(np.flatnonzero(~is_val)), data.take(np.flatnonzero(is_val))
        self.net = net = self._build_net(side).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        tr_seq, tr_cand = _to_torch(train.seq, dev), _to_torch(train.cand, dev)
        tr_w = torch.from_numpy(train.weight).to(dev)
        gen = torch.Generator().manual_seed(cfg.seed)
        amp = dev.type == "cuda"  # bf16 autocast on GPU; CPU stays float32 (exact and deterministic)
        best, best_state, bad = math.inf, None, 0
        self.history = []
        for epoch in range(cfg.max_epochs):
            net.train()
            perm = torch.randperm(len(train), generator=gen).to(dev)
            # The loss is summed on the device and checked once per epoch: reading it back every step made
            # the host wait for the GPU twice per step (the CPU path is unchanged by this).
            total_t, batches = torch.zeros((), dtype=torch.float64, device=dev), 0
            for s in range(0, len(train), cfg.batch_groups):
                idx = perm[s: s + cfg.batch_groups]
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net({k: v[idx] for k, v in tr_seq.items()}, {k: v[idx] for k, v in tr_cand.items()})
                loss = self._loss(logits.float(), tr_w[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                total_t += loss.detach()
                batches += 1
            total = float(total_t)
            if not math.isfinite(total):
                raise NonFiniteWeightsError(f"ranker: non-finite loss in epoch {epoch + 1}",
                                            "lower the learning rate; check the numeric features")
            self._check_finite()
            val_loss = self._eval_loss(val, dev) if len(val) else total / max(batches, 1)
            self.history.append({"epoch": epoch + 1, "train_loss": total / max(batches, 1), "val_loss": val_loss})
            log.info("ranker epoch %d train %.4f val %.4f", epoch + 1, total / max(batches, 1), val_loss)
            if val_loss < best - 1e-4:
                best, bad = val_loss, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval().to("cpu")
        self._check_finite()
        self.calibration = self._calibrate(val if len(val) else train)
        self.metrics = {"epochs": len(self.history), "best_val_loss": best, "train_groups": len(train),
                        "val_groups": len(val), "device": dev.type}

    def _check_finite(self) -> None:
        assert self.net is not None
        for name, p in self.net.state_dict().items():
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise NonFiniteWeightsError(f"ranker: NaN/inf in {name} after training",
                                            "lower the learning rate or check the input features")

    @torch.inference_mode()
    def _group_logits(self, data: Encoded, dev: torch.device) -> torch.Tensor:
        assert self.net is not None
        self.net.eval()
        out = []
        amp = dev.type == "cuda"
        step = max(1, self.config.score_batch_rows // max(data.cand["item"].shape[1], 1))
        for s in range(0, len(data), step):
            part = data.take(slice(s, s + step))  # a view, not a copy
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                out.append(self.net(_to_torch(part.seq, dev), _to_torch(part.cand, dev)).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, 1))

    def _eval_loss(self, val: Encoded, dev: torch.device) -> float:
        logits = self._group_logits(val, dev)
        return float(self._loss(logits, torch.from_numpy(val.weight)))

    def _calibrate(self, data: Encoded) -> tuple[float, float]:
        """Platt scaling of the logits (positive vs its negatives): P_rank is then a probability."""
        logits = self._group_logits(data, torch.device("cpu")).flatten().clone()
        if not len(logits):
            return (1.0, 0.0)
        # Platt's (1999) targets: (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0. On separable
        # training logits (a sequence that fully determines the next item) the 0/1 fit has no finite optimum:
        # the slope ran off to ~3000 and every good candidate scored exactly 1.0, a tie in the fused order.
        y = torch.zeros_like(logits.view(len(data), -1))
        n_pos, n_neg = y.shape[0], y.shape[0] * (y.shape[1] - 1)
        y[:, 1:] = 1.0 / (n_neg + 2.0)
        y[:, 0] = (n_pos + 1.0) / (n_pos + 2.0)
        y = y.flatten()
        ab = torch.tensor([1.0, 0.0], requires_grad=True)
        opt = torch.optim.LBFGS([ab], max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(ab[0] * logits + ab[1], y)
            # A weak pull towards the identity: on separable data the slope would otherwise grow without
            # bound and saturate every probability to exactly 0 or 1 (ties in the fused score).
            loss = loss + 1e-3 * ((ab[0] - 1.0) ** 2 + 0.01 * ab[1] ** 2)
            loss.backward()
            return loss

        opt.step(closure)
        a, b = (float(x) for x in ab.detach())
        if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
            return (1.0, 0.0)
        return (a, b)

    # -- scoring --------------------------------------------------------------------------------------
    def logits(self, cand: pd.DataFrame, events: pd.DataFrame, item_feats: pd.DataFrame,
               as_of: datetime | None, *, emb: pd.DataFrame | None = None,
               user_feats: pd.DataFrame | None = None) -> np.ndarray:
        """Raw logits per candidate row (see :meth:`score`)."""
        space, net = self._require()
        cfg = self.config
        n = len(cand)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        blocks = UserBlocks.of(cand["user_id"].to_numpy(dtype=np.int64))
        has_stats = {"activity", "recent_events", "trend"} <= set(item_feats.columns)
        catalogue = "item_id" in item_feats.columns and has_stats
        if catalogue and self._catalogue is not None and self._catalogue[0] is item_feats:
            side, stats = self._catalogue[1:]
        else:
            if has_stats:
                stats = item_feats.drop_duplicates("item_id").set_index("item_id")[["activity", "recent_events",
                                                                                   "trend"]]
            else:
                stats = item_stats_at(events, as_of or pd.Timestamp.max.tz_localize("UTC"), cfg.event_weights,
                                      cfg.half_life_days)
            side = space.side_table(item_feats) if "item_id" in item_feats.columns else space.side_table(
                pd.DataFrame({"item_id": cand["item_id"].unique()}))
            self._catalogue = (item_feats, side, stats) if catalogue else None
        seq = user_sequences(events, blocks.users, as_of, space)
        profile = self._profile(events, blocks.users, as_of,
                                item_feats if "item_id" in item_feats.columns else cand[["item_id"]], user_feats)
        flat = candidate_tensors(cand, side, stats, space, emb, self._affinity(events, as_of, side), profile)
        self._cand_emb(flat)
        out = np.empty(n, dtype=np.float32)
        n_users = len(blocks.users)
        step = max(1, cfg.score_batch_rows // blocks.width)
        net.eval()
        with torch.inference_mode():
            for s in range(0, n_users, step):
                e = min(s + step, n_users)
                block = {k: torch.from_numpy(blocks.block(v, s, e)) for k, v in flat.items()}
                sq = {k: torch.from_numpy(v[s:e]) for k, v in seq.items()}
                blocks.put(out, net(sq, block).numpy(), s, e)
        return out

    def score(self, cand: pd.DataFrame, events: pd.DataFrame, item_feats: pd.DataFrame,
              as_of: datetime | None, *, emb: pd.DataFrame | None = None,
              user_feats: pd.DataFrame | None = None) -> np.ndarray:
        """P_rank per row of ``cand`` (user_id, item_id, and source / recall_score / p_recall when known).

        ``events``: the users' events (only ``ts < as_of`` are used); ``item_feats``: item_id with category,
        brand, price and ideally activity / recent_events / trend (else computed from ``events``).
        ``user_feats``: the run's user_features rows of these users (the nightly reads its parts); users it
        lacks get theirs computed from ``events`` by the same functions.
        """
        a, b = self.calibration
        z = self.logits(cand, events, item_feats, as_of, emb=emb, user_feats=user_feats).astype(np.float64)
        from scipy.special import expit

        # Never exactly 0: the fusion multiplies by it, and a hard 0 would erase recall's order.
        return np.maximum(expit(a * z + b), 1e-300)

    # -- persistence ----------------------------------------------------------------------------------
    def sidecar(self) -> dict:
        space, net = self._require()
        schema = {"sequence": {"items": "int64 item index (0 pad, 1 unknown)", "types": list(space.event_types),
                               "gaps_seconds_edges": list(space.gap_edges), "length": space.seq_len},
                  "candidate": {"index": ["item", "cat", "top", "brand", "price", "source"],
                                "numeric": list(space.numeric), "embedding_dim": space.embedding_dim}}
        body = {"config": asdict(self.config), "net": net.cfg.to_dict(), "feature_schema": schema}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **body, "config_digest": digest,
                "feature_space": space.to_json(), "calibration": list(self.calibration),
                "library_versions": library_versions(), "metrics": self.metrics, "history": self.history}

    @property
    def config_digest(self) -> str:
        return self.sidecar()["config_digest"]

    def save(self, path: str | Path) -> Path:
        """Write ``model.safetensors`` + ``model.json`` into the folder ``path``; returns the folder."""
        from safetensors.torch import save_file

        space, net = self._require()
        self._check_finite()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        tensors["vocab.item_ids"] = torch.from_numpy(space.item_ids.astype(np.int64))
        if self._item_emb is not None:
            tensors["vocab.item_emb"] = torch.from_numpy(self._item_emb)
        side = self.sidecar()
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT,
                                                              "config_digest": side["config_digest"]})
        (out / SIDECAR_FILE).write_text(json.dumps(side, indent=2, default=str))
        return out

    @classmethod
    def load(cls, path: str | Path) -> RankerModel:
        """The model saved in folder ``path``, on CPU in eval mode (digest and format checked)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        p = Path(path)
        if not (p / SIDECAR_FILE).exists() or not (p / WEIGHTS_FILE).exists():
            raise ModelError(f"ranker: no saved model in {p}", f"{SIDECAR_FILE} and {WEIGHTS_FILE} must exist")
        side = json.loads((p / SIDECAR_FILE).read_text())
        if side.get("format") != FORMAT or side.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"ranker: {p} holds format {side.get('format')!r} v{side.get('format_version')}",
                             f"this build reads {FORMAT} v{FORMAT_VERSION}")
        # The weights carry the digest of the sidecar they were saved with: a model.json next to another
        # model's weights would otherwise load (same shapes) or fail deep inside torch (other shapes).
        with safe_open(str(p / WEIGHTS_FILE), framework="pt") as f:
            stamped = (f.metadata() or {}).get("config_digest")
        if stamped != side.get("config_digest"):
            raise ModelError(f"ranker: {p / WEIGHTS_FILE} has config digest {stamped!r}, {SIDECAR_FILE} "
                             f"{side.get('config_digest')!r}", "the two files come from different models: "
                             "save the model again or restore both files together")
        tensors = load_file(str(p / WEIGHTS_FILE))
        m = cls(RankerConfig(**side["config"]))
        m.space = FeatureSpace.from_json(side["feature_space"], tensors["vocab.item_ids"].numpy())
        m._item_emb = tensors["vocab.item_emb"].numpy() if "vocab.item_emb" in tensors else None
        m.net = RankerNet(NetConfig(**side["net"]))
        try:
            m.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        except RuntimeError as exc:  # missing / unexpected / differently shaped tensors
            raise ModelError(f"ranker: the weights in {p} do not fit the network in its sidecar: {exc}",
                             "save the model again with this build") from exc
        m.net.eval()
        m.calibration = (float(side["calibration"][0]), float(side["calibration"][1]))
        m.metrics, m.history = side.get("metrics", {}), side.get("history", [])
        if m.config_digest != side["config_digest"]:
            raise ModelError(f"ranker: config digest mismatch in {p}", "the sidecar was edited or is from "
                             "another build")
        m._check_finite()
        return m
