"""The ``ranker`` model of the evaluation harness: merged recall -> a sequential ranker over the candidates.

Registered on import (``pipeline.evaluate.models.RESERVED`` points here).

- **Recall** (:class:`MergedRecall`): item-CF, ALS, sequential item-kNN (pipeline.recall.sequential) and
  popularity, each fitted on the training part; a user's candidates are the union of each source's top
  ``n_per_source`` unseen items, and ``P_recall`` is the weighted mean of the per-source scores scaled
  to [0, 1] per user (the pipeline's fusion uses it).
- **Ranker** (:class:`SASRecCE`): SASRec (pipeline.rank.net.SASRecNet) trained on the training sequences
  in time order with a softmax cross-entropy over the positive and ``n_neg`` uniformly sampled
  negatives shared by the batch (``n_neg=0``: full softmax over the catalogue); Klenitskiy & Vasilev
  2023 find CE far stronger than SASRec's original BCE. Early stopping on NDCG@10 of the validation
  item (leave-one-out's item -2, handed over with ``set_validation``) or, without one, of an inner
  holdout of train (:func:`inner_holdout`: each user's last item, or a random one for random splits),
  which is then not trained on. Device from ``RERANK_DEVICE`` (:func:`pipeline.rank.model.resolve_device`);
  one torch thread on CPU by default (see :func:`_threads`). Defaults (lr 2e-3, dropout 0.3, 512
  negatives, early stop after 2 checks every 3 epochs without gain) were chosen on Beauty's validation
  item: the net peaks there after ~15 epochs, a few minutes on one CPU core.
- ``score`` (leave-one-out's full ranking): candidates get ranker logits lifted above every
  non-candidate; the rest keep their ranker order below. ``n_per_source=0`` ranks the whole catalogue.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pipeline.errors import ModelError, NonFiniteWeightsError
from pipeline.evaluate.models import Recommender, get_model, register_model
from pipeline.rank.head import SourceTop, source_top
from pipeline.rank.model import resolve_device
from pipeline.rank.net import SASRecNet

log = logging.getLogger(__name__)

#: Recall sources of the merge and their parameters (names of pipeline.evaluate.models).
DEFAULT_SOURCES: dict[str, dict] = {"item-cf": {}, "als": {}, "seq-knn": {}, "popularity": {}}


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch CPU threads (restored after). On a small shared machine one thread is several
    times faster than the default: OpenMP threads spin-wait for cores other processes hold."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _pad_left(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """Token matrix ``len(seqs) x length``: the last ``length`` items of each, as tokens (index + 1)."""
    out = np.zeros((len(seqs), length), np.int64)
    for r, s in enumerate(seqs):
        tail = s[-length:]
        if len(tail):
            out[r, length - len(tail):] = tail + 1
    return out


class SASRecCE:
    """SASRec trained with sampled-softmax cross-entropy; fit on index sequences, score catalogue rows."""

    def __init__(self, n_items: int, *, dim: int = 64, heads: int = 1, layers: int = 2, seq_len: int = 50,
                 dropout: float = 0.2, lr: float = 1e-3, weight_decay: float = 0.0, batch_size: int = 128,
                 n_neg: int = 256, max_epochs: int = 40, eval_every: int = 2, patience: int = 3,
                 max_seconds: float | None = None, seed: int = 42, device: str | None = None,
                 threads: int | None = 1, valid_users: int = 5000) -> None:
        self.threads, self.valid_users = threads, valid_users
        self.n_items, self.seq_len, self.lr, self.weight_decay = n_items, seq_len, lr, weight_decay
        self.batch_size, self.n_neg, self.max_epochs = batch_size, n_neg, max_epochs
        self.eval_every, self.patience, self.max_seconds, self.seed = eval_every, patience, max_seconds, seed
        self.device = resolve_device(device or os.environ.get("RERANK_DEVICE", "auto"))
        torch.manual_seed(seed)
        self.net = SASRecNet(n_items, dim=dim, heads=heads, layers=layers, seq_len=seq_len,
                             dropout=dropout).to(self.device)
        self.history: list[dict] = []

    # -- training ---------------------------------------------------------------------------------------
    def fit(self, seqs: list[np.ndarray], valid: tuple[list[np.ndarray], np.ndarray] | None) -> SASRecCE:
        """Train on ``seqs`` (each predicts its own next items); early-stop on ``valid`` = (inputs, targets)."""
        with _threads(self.threads if self.device.type == "cpu" else None):
            return self._fit(seqs, valid)

    def _fit(self, seqs: list[np.ndarray], valid: tuple[list[np.ndarray], np.ndarray] | None) -> SASRecCE:
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        train = [s for s in seqs if len(s) >= 2]
        if not train:
            raise ModelError("ranker: no training sequence has two items", "the split left too little history")
        lengths = np.array([min(len(s), self.seq_len + 1) for s in train])
        if valid is not None and len(valid[1]) > self.valid_users > 0:
            # a fixed sample of the validation users: early stopping needs a trend, not every user
            pick = np.sort(rng.choice(len(valid[1]), self.valid_users, replace=False))
            valid = ([valid[0][i] for i in pick], np.asarray(valid[1])[pick])
        tokens = _pad_left(train, self.seq_len + 1)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, bad, t0 = -1.0, None, 0, time.perf_counter()
        for epoch in range(1, self.max_epochs + 1):
            self.net.train()
            # batches of similar length (less padding), in random order
            order = np.lexsort((rng.random(len(train)), lengths))
            batches = [order[s: s + self.batch_size] for s in range(0, len(order), self.batch_size)]
            total, n = 0.0, 0
            for b in rng.permutation(len(batches)):
                idx = batches[b]
                width = int(lengths[idx].max())
                tok = torch.from_numpy(tokens[idx, -width:]).to(self.device)
                inp, tgt = tok[:, :-1], tok[:, 1:]
                loss = self._loss(inp, tgt, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            if not np.isfinite(total):
                raise NonFiniteWeightsError(f"ranker: non-finite training loss at epoch {epoch}",
                                            "lower lr or check the inputs")
            rec = {"epoch": epoch, "loss": total / max(n, 1)}
            last = epoch == self.max_epochs or (self.max_seconds is not None
                                                and time.perf_counter() - t0 > self.max_seconds)
            if valid is not None and (epoch % self.eval_every == 0 or last):
                rec["valid_ndcg@10"] = v = self.validate(*valid)
                if v > best:
                    best, best_state, bad = v, copy.deepcopy(self.net.state_dict()), 0
                else:
                    bad += 1
            self.history.append(rec)
            log.info("ranker epoch %d: %s", epoch, rec)
            if bad >= self.patience or last:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        for p in self.net.parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteWeightsError("ranker: NaN or inf weights after training", "lower lr")
        self.best_valid = best
        return self

    def _loss(self, inp: torch.Tensor, tgt: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h = self.net(inp)
        keep = tgt > 0
        h, t = h[keep], tgt[keep]
        if self.n_neg <= 0:  # full softmax over the catalogue
            return torch.nn.functional.cross_entropy(self.net.logits(h), t - 1)
        neg = torch.randint(1, self.n_items + 1, (self.n_neg,), generator=gen).to(self.device)
        pos = (h * self.net.item(t)).sum(-1, keepdim=True)
        nl = self.net.logits(h, neg)
        nl = nl.masked_fill(neg[None, :] == t[:, None], float("-inf"))  # a sampled positive is no negative
        logits = torch.cat([pos, nl], dim=1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=h.device))

    # -- scoring ----------------------------------------------------------------------------------------
    def score(self, seqs: list[np.ndarray], batch: int = 1024) -> np.ndarray:
        """Dense ``len(seqs) x n_items`` logits of the next item after each sequence."""
        with _threads(self.threads if self.device.type == "cpu" else None), torch.inference_mode():
            return self._score(seqs, batch)

    def _score(self, seqs: list[np.ndarray], batch: int) -> np.ndarray:
        self.net.eval()
        out = np.empty((len(seqs), self.n_items), np.float32)
        for s in range(0, len(seqs), batch):
            part = seqs[s: s + batch]
            width = max(1, min(self.seq_len, max((len(q) for q in part), default=1)))
            tok = torch.from_numpy(_pad_left(part, width)).to(self.device)
            h = self.net(tok)[:, -1]
            out[s: s + len(part)] = self.net.logits(h).float().cpu().numpy()
        return out

    def validate(self, seqs: list[np.ndarray], targets: np.ndarray) -> float:
        """NDCG@10 of ``targets`` ranked among all items minus each sequence's items (ties pessimistic)."""
        ranks = []
        for s in range(0, len(seqs), 1024):
            part, tg = seqs[s: s + 1024], targets[s: s + 1024]
            sc = self.score(part)
            t = sc[np.arange(len(part)), tg].copy()
            for r, q in enumerate(part):
                sc[r, q] = -np.inf
            ranks.append((sc > t[:, None]).sum(1))
        rank = np.concatenate(ranks)
        return float(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).mean())


#: The last trained ranker net by digest of (catalogue size, seed, params, training and validation data):
#: training is deterministic, so a second model asking for the same net reuses it.
_TRAINED: dict[str, SASRecCE] = {}


def _digest(n_items: int, seed: int, params: dict, train: list[np.ndarray], valid: tuple | None) -> str:
    h = hashlib.sha256(repr((n_items, seed, sorted(params.items()))).encode())
    for s in train:
        h.update(np.asarray(s, np.int64).tobytes() + b"|")
    if valid is not None:
        for s in valid[0]:
            h.update(np.asarray(s, np.int64).tobytes() + b"|")
        h.update(np.asarray(valid[1], np.int64).tobytes())
    return h.hexdigest()


class MergedRecall:
    """Several recall sources fitted side by side; candidates = union of each one's top ``n_per_source``."""

    def __init__(self, sources: dict[str, dict] | None = None, *, n_per_source: int = 100,
                 weights: dict[str, float] | None = None, seed: int = 42) -> None:
        self.sources_params = dict(DEFAULT_SOURCES if sources is None else sources)
        self.n_per_source, self.seed = n_per_source, seed
        self.weights = weights or {}
        self.models: dict[str, Recommender] = {}

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None) -> MergedRecall:
        for name, params in self.sources_params.items():
            self.models[name] = get_model(name, **{"seed": self.seed, **params}).fit(train, items)
        return self

    def set_history(self, rows: pd.DataFrame | None) -> None:
        for m in self.models.values():
            m.set_history(rows)

    def tops(self, users: np.ndarray, history: sp.csr_matrix | None, seen: sp.csr_matrix) -> dict[str, SourceTop]:
        """Each source's scores for ``users`` (seen items ``-inf``) and its top ``n_per_source``."""
        seen_rc = seen.nonzero()
        out: dict[str, SourceTop] = {}
        for name, model in self.models.items():
            sc = model.score(users, history).astype(np.float32)
            sc[seen_rc] = -np.inf
            out[name] = source_top(sc, self.n_per_source)
        return out

    @staticmethod
    def parts_from(tops: dict[str, SourceTop]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(candidate mask, per-source scores scaled to [0, 1] per user, 0 off the source's top-k)."""
        first = next(iter(tops.values()))
        n_users, n_items = first.raw.shape
        mask = np.zeros((n_users, n_items), bool)
        parts: dict[str, np.ndarray] = {}
        for name, t in tops.items():
            rows = np.broadcast_to(np.arange(n_users)[:, None], t.top.shape)
            mask[rows[t.ok], t.top[t.ok]] = True
            vals, lo, span = t.scale()  # per-user: min of the user's top-k -> 0, max -> 1
            p = np.zeros((n_users, n_items), np.float32)
            p[rows, t.top] = np.where(t.ok, (vals - lo) / span, 0.0)
            parts[name] = p
        return mask, parts

    def components(self, users: np.ndarray, history: sp.csr_matrix | None,
                   seen: sp.csr_matrix) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(candidate mask, per-source scores scaled to [0, 1] per user, 0 off the source's top-k)."""
        return self.parts_from(self.tops(users, history, seen))

    def fuse(self, parts: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
        """P_recall: the weighted mean of the per-source scaled scores."""
        weights = self.weights if weights is None else weights
        out, total = None, 0.0
        for name, p in parts.items():
            w = float(weights.get(name, 1.0))
            out = w * p if out is None else out + w * p
            total += w
        return (out / max(total, 1e-12)).astype(np.float32)

    def candidates(self, users: np.ndarray, history: sp.csr_matrix | None,
                   seen: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """(candidate mask, P_recall) for ``users`` (both ``U x n_items``); seen items are never candidates."""
        mask, parts = self.components(users, history, seen)
        return mask, self.fuse(parts)


def inner_holdout(rows: pd.DataFrame, how: str = "last", seed: int = 42, min_len: int = 3,
                  share: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows without the holdout, holdout) of the users with at least ``min_len`` rows: each one's last
    row in time order (``how="last"``, a next-item target), a random one (``"random"``) or a random
    ``share`` of them, at least one (``"share"``: like msr-stratified's random split, many targets each)."""
    if how not in ("last", "random", "share"):
        raise ModelError(f"ranker: inner_holdout {how!r}", "use 'last', 'random' or 'share'")
    keys = ["user_id"] + [c for c in ("ts", "event_id") if c in rows.columns]
    data = rows.assign(_pos=np.arange(len(rows))).sort_values([*keys, "_pos"], kind="stable")
    g = data.groupby("user_id", sort=False)
    n = g["item_id"].transform("size").to_numpy()
    if how == "last":
        pick = (g.cumcount(ascending=False).to_numpy() == 0)
    else:
        r = pd.Series(np.random.default_rng(seed).random(len(data)), index=data.index)
        order = r.groupby(data["user_id"].to_numpy()).rank(method="first").to_numpy()  # 1 = the user's lowest
        take = 1 if how == "random" else np.maximum(1, np.floor(share * n))
        pick = order <= take
    pick &= n >= min_len
    data = data.drop(columns="_pos")
    return data[~pick], data[pick]


class RankerRecommender(Recommender):
    """``ranker``: the merged recall's candidates ordered by the SASRec-CE ranker (see module docstring)."""

    name = "ranker"
    uses_history = True
    uses_order = True

    def __init__(self, *, n_per_source: int = 100, sources: dict[str, dict] | None = None,
                 recall_weights: dict[str, float] | None = None, dim: int = 64, heads: int = 1, layers: int = 2,
                 seq_len: int = 50, dropout: float = 0.3, lr: float = 2e-3, weight_decay: float = 0.0,
                 batch_size: int = 128, n_neg: int = 512, max_epochs: int = 30, eval_every: int = 3,
                 patience: int = 2, max_seconds: float | None = None, device: str | None = None,
                 threads: int | None = 1, valid_users: int = 5000, early_stopping: bool = True,
                 inner_holdout: str = "last", holdout_share: float = 0.25, use_ratings: bool = False,
                 **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.n_per_source, self.early_stopping = n_per_source, early_stopping
        self.inner_holdout, self.holdout_share = inner_holdout, holdout_share
        self.recall_params = {"sources": sources, "n_per_source": n_per_source, "weights": recall_weights}
        self.net_params = {"dim": dim, "heads": heads, "layers": layers, "seq_len": seq_len, "dropout": dropout,
                           "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "n_neg": n_neg,
                           "max_epochs": max_epochs, "eval_every": eval_every, "patience": patience,
                           "max_seconds": max_seconds, "device": device, "threads": threads,
                           "valid_users": valid_users}

    # -- fitting ----------------------------------------------------------------------------------------
    #: Whether :meth:`_tune` is run on the validation users after training (the pipeline's fusion).
    tunes = False

    def _targets(self, valid: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item indices) of the validation targets that are known users and items: one per
        user (the last), or every held-out row with ``inner_holdout="share"``."""
        v = valid if self.inner_holdout == "share" else valid.drop_duplicates("user_id", keep="last")
        tgt = np.searchsorted(self.item_ids, v["item_id"].to_numpy())
        ok = (tgt < len(self.item_ids)) & (self.item_ids[np.minimum(tgt, len(self.item_ids) - 1)]
                                           == v["item_id"].to_numpy())
        rows, known = self._rows(v["user_id"].to_numpy())
        sel = ok & known
        return rows[sel], tgt[sel]

    def _fit(self, user_items: sp.csr_matrix) -> None:
        # Validation: the harness's item (leave-one-out's item -2) when given, else an inner holdout of
        # train (one item per user), which is then neither trained on nor in the tuning history.
        fit_rows, valid, inner = self.train_rows, None, False
        if self.valid_rows is not None and len(self.valid_rows):
            valid = self._targets(self.valid_rows)
        elif self.early_stopping or self.tunes:
            fit_rows, held = inner_holdout(self.train_rows, self.inner_holdout, self.seed,
                                           share=self.holdout_share)
            valid, inner = self._targets(held), True
        from pipeline.recall.sequential import ordered_sequences

        fitted = ordered_sequences(fit_rows, self.item_ids)
        empty = np.zeros(0, np.int64)
        seqs = [fitted.get(u, empty) for u in self.user_ids.tolist()]
        val = None if valid is None or not len(valid[0]) else ([seqs[r] for r in valid[0]], valid[1])
        self._fit_ranker(seqs, val if self.early_stopping else None)
        self.recall = None
        if self.n_per_source > 0:
            catalog = pd.DataFrame({"item_id": self.item_ids})
            self.recall = MergedRecall(self.recall_params["sources"], n_per_source=self.n_per_source,
                                       weights=dict(self.recall_params["weights"] or {}), seed=self.seed)
            self.recall.fit(fit_rows if self.tunes else self.train_rows, catalog)
            if self.tunes and val is not None:
                self._tune(valid[0], val[0], valid[1], self.matrix(fit_rows))
            if self.tunes and inner:  # tuned without the holdout; the lists use everything
                self.recall.fit(self.train_rows, catalog)

    def _fit_ranker(self, train: list[np.ndarray], valid: tuple | None) -> None:
        key = _digest(len(self.item_ids), self.seed, self.net_params, train, valid)
        if key in _TRAINED:  # the same net on the same data (``ranker`` and ``pipeline`` in one run)
            self.ranker = _TRAINED[key]
            return
        self.ranker = SASRecCE(len(self.item_ids), seed=self.seed, **self.net_params).fit(train, valid)
        _TRAINED.clear()  # keep one: a net per catalogue can be large
        _TRAINED[key] = self.ranker

    def _tune(self, rows: np.ndarray, seqs: list[np.ndarray], targets: np.ndarray, hist: sp.csr_matrix) -> None:
        """Hook: choose fusion parameters on the validation users (``rows``, their ``seqs`` and ``targets``)."""

    def set_history(self, rows: pd.DataFrame | None) -> None:
        super().set_history(rows)
        if getattr(self, "recall", None) is not None:
            self.recall.set_history(rows)

    # -- scoring ----------------------------------------------------------------------------------------
    def _parts(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(ranker logits, candidate mask, P_recall) for known users ``rows`` (mask None: no recall)."""
        users = self.user_ids[rows]
        logits = self.ranker.score(self.sequences_for(users, supplied))
        if self.recall is None:
            return logits, None, None
        mask, p_recall = self.recall.candidates(users, history if supplied else None, sp.csr_matrix(history))
        return logits, mask, p_recall

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        logits, mask, _ = self._parts(rows, history, supplied)
        if mask is None:
            return logits
        return _lift(logits, mask)


def _lift(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` with the masked cells shifted above every unmasked cell of their row (order kept)."""
    lo = values.min(1, keepdims=True)
    hi = values.max(1, keepdims=True)
    return np.where(mask, values + (hi - lo) + 1.0, values).astype(np.float32)


register_model("ranker", RankerRecommender, replace=True)
