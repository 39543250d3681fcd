"""A listwise head over each user's recall candidates: learns from held-out next items how far to trust
each recall source's score and rank, the sequence model's logit and the item's popularity.

The hand-made fusion ``P_recall ** a * P_rank ** b`` mixes min-max scaled source scores with one weight
each, the same for every user and every rank. The head sees, per candidate, every source's scaled score,
rank and raw score, the ranker's logit (absolute, and relative to the user's best candidate and to the
softmax over the candidates), the item's popularity and the length of the user's history, and is trained
with a softmax cross-entropy over the user's candidates (the held-out item is the positive), the same
loss as the sequence model. It is trained on the validation item only (never the test item), so its
figures on that item are in-sample: :func:`cross_fit` gives the out-of-fold estimate.

Pure numpy + torch; the caller hands over dense ``users x items`` score blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import ModelError, NonFiniteWeightsError


@dataclass
class SourceTop:
    """One recall source's scores for a block of users: dense ``raw`` (``-inf`` on seen items) and the
    indices of its top ``k`` unseen items, best first (``ok`` False where a user has fewer)."""

    raw: np.ndarray
    top: np.ndarray
    ok: np.ndarray

    def scale(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top-k values, per-user offset, span): ``(v - offset) / span`` maps a user's top-k onto [0, 1]
        (min -> 0, max -> 1; span 1 where the top-k is flat or empty)."""
        vals = np.take_along_axis(self.raw, self.top, axis=1)
        hi = np.where(self.ok, vals, -np.inf).max(1, keepdims=True)
        lo = np.where(self.ok, vals, np.inf).min(1, keepdims=True)
        span = np.where(np.isfinite(hi - lo) & (hi > lo), hi - lo, 1.0)
        return vals, np.where(np.isfinite(lo), lo, 0.0), span


def source_top(raw: np.ndarray, k: int) -> SourceTop:
    """Top ``k`` of each row of ``raw`` (``-inf`` = excluded), sorted best first."""
    k = max(1, min(k, raw.shape[1]))
    top = np.argpartition(-raw, kth=k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(raw, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return SourceTop(raw=raw, top=top, ok=np.isfinite(np.take_along_axis(raw, top, axis=1)))


@dataclass
class CandidateBlock:
    """Candidates of a block of users, padded: ``items`` (catalogue indices, 0 where ``valid`` is False)
    and their features ``x`` (``U x C x F``)."""

    items: np.ndarray
    valid: np.ndarray
    x: np.ndarray

    def positions(self, targets: np.ndarray) -> np.ndarray:
        """Column of each user's target among their candidates, -1 where it is not a candidate."""
        hit = (self.items == np.asarray(targets)[:, None]) & self.valid
        return np.where(hit.any(1), hit.argmax(1), -1)

    def hits(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``U x C`` mask of the candidates that are targets; ``(rows[j], targets[j])`` are (block row,
        catalogue index) pairs, several per row allowed."""
        out = np.zeros(self.valid.shape, bool)
        hit = (self.items[rows] == np.asarray(targets)[:, None]) & self.valid[rows]
        found = hit.any(1)
        out[np.asarray(rows)[found], hit.argmax(1)[found]] = True
        return out

    def take(self, dense: np.ndarray) -> np.ndarray:
        """``dense`` (``U x n_items``) at the candidates (0 on padding)."""
        return np.where(self.valid, np.take_along_axis(dense, self.items, axis=1), 0)


def _slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def candidate_block(mask: np.ndarray, tops: Mapping[str, SourceTop], *, popularity: np.ndarray,
                    history_len: np.ndarray, logits: np.ndarray | None = None) -> CandidateBlock:
    """Features of the candidates ``mask`` (``U x n_items``; the union of the sources' tops).

    Per source (in ``tops`` order): score scaled to [0, 1] over the user's top-k (0 off it), log(1 + rank)
    (log(1 + k) off it) and the signed log of the raw score; then log popularity, log history length, the
    number of sources that recalled the item and, with ``logits``, the ranker's logit, its gap to the
    user's best candidate and its log-softmax over the candidates.
    """
    U, n_items = mask.shape
    counts = mask.sum(1)
    C = max(1, int(counts.max(initial=0)))
    r, c = np.nonzero(mask)
    col = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    items = np.zeros((U, C), np.int64)
    valid = np.zeros((U, C), bool)
    items[r, col] = c
    valid[r, col] = True
    feats: list[np.ndarray] = []
    n_src = np.zeros((U, C), np.float32)
    for t in tops.values():
        k = t.top.shape[1]
        _, lo, span = t.scale()
        rank = np.full((U, n_items), k, np.int32)
        rows = np.broadcast_to(np.arange(U)[:, None], t.top.shape)
        rank[rows[t.ok], t.top[t.ok]] = np.broadcast_to(np.arange(k), t.top.shape)[t.ok]
        rk = np.take_along_axis(rank, items, axis=1)
        raw = np.take_along_axis(t.raw, items, axis=1)
        raw = np.where(np.isfinite(raw), raw, 0.0)
        scaled = np.where(rk < k, (raw - lo) / span, 0.0)
        n_src += rk < k
        feats += [scaled, np.log1p(rk), _slog(raw)]
    feats += [np.log1p(np.asarray(popularity, np.float64)[items]),
              np.broadcast_to(np.log1p(np.asarray(history_len, np.float64))[:, None], (U, C)), n_src]
    if logits is not None:
        lg = np.where(valid, np.take_along_axis(logits, items, axis=1), -np.inf).astype(np.float64)
        top = lg.max(1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        lse = np.log(np.exp(lg - top).sum(1, keepdims=True)) + top
        feats += [lg, lg - top, lg - lse]
    x = np.stack([np.where(valid, np.where(np.isfinite(f), f, 0.0), 0.0) for f in feats], -1).astype(np.float32)
    return CandidateBlock(items=items, valid=valid, x=x)


class ListwiseHead:
    """An MLP scoring each candidate from its features, trained with a softmax cross-entropy over the
    user's candidates (the held-out item the positive); features standardised on the training rows."""

    def __init__(self, *, hidden: int = 32, epochs: int = 6, lr: float = 3e-3, weight_decay: float = 1e-5,
                 batch_users: int = 256, seed: int = 42) -> None:
        self.hidden, self.epochs, self.lr, self.weight_decay = hidden, epochs, lr, weight_decay
        self.batch_users, self.seed = batch_users, seed
        self.net: torch.nn.Module | None = None

    def fit(self, x: np.ndarray, valid: np.ndarray, target: np.ndarray) -> ListwiseHead:
        """Train on ``x`` (``U x C x F``, ``valid``: ``U x C``) and the held-out items' columns ``target``:
        one per user (``U``, -1 = not a candidate) or a ``U x C`` mask (several per user, each an equal
        share of the soft label); users with none among their candidates are skipped."""
        hits = target_mask(target, valid.shape)
        keep = hits.any(1)
        if not keep.any():
            raise ModelError("head: no held-out item is among the candidates",
                             "more candidates per source (n_per_source) or a larger validation set")
        x, valid, hits = x[keep], valid[keep], hits[keep]
        soft = (hits / hits.sum(1, keepdims=True)).astype(np.float32)
        rows = x[valid]
        self.mu, self.sd = rows.mean(0), rows.std(0) + 1e-6
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        F = x.shape[-1]
        if self.hidden > 0:
            self.net = torch.nn.Sequential(torch.nn.Linear(F, self.hidden), torch.nn.GELU(),
                                           torch.nn.Linear(self.hidden, self.hidden), torch.nn.GELU(),
                                           torch.nn.Linear(self.hidden, 1))
        else:
            self.net = torch.nn.Linear(F, 1)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.net.train()
        for _ in range(self.epochs):
            perm = rng.permutation(len(x))
            for s in range(0, len(perm), self.batch_users):
                b = perm[s: s + self.batch_users]
                logits = self._forward(x[b], valid[b])
                loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(soft[b, : logits.shape[1]]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for p in self.net.parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteWeightsError("head: NaN or inf weights after training", "lower its lr")
        self.net.eval()
        return self

    def _forward(self, x: np.ndarray, valid: np.ndarray) -> torch.Tensor:
        width = max(1, int(valid.sum(1).max(initial=0)))  # candidates are packed to the left
        z = torch.from_numpy(((x[:, :width] - self.mu) / self.sd).astype(np.float32))
        out = self.net(z).squeeze(-1)
        return out.masked_fill(~torch.from_numpy(valid[:, :width]), -1e9)

    def score(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Head scores ``U x C`` (``-inf`` on padding)."""
        if self.net is None:
            raise ModelError("head: score before fit")
        out = np.full(valid.shape, -np.inf, np.float32)
        with torch.inference_mode():
            for s in range(0, len(x), 1024):
                sc = self._forward(x[s: s + 1024], valid[s: s + 1024]).numpy()
                out[s: s + 1024, : sc.shape[1]] = np.where(valid[s: s + 1024, : sc.shape[1]], sc, -np.inf)
        return out


def target_mask(target: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``U x C`` mask of the target columns (``target``: one column per user, -1 = none, or a mask)."""
    target = np.asarray(target)
    if target.ndim == 2:
        return target.astype(bool)
    out = np.zeros(shape, bool)
    has = target >= 0
    out[np.flatnonzero(has), target[has]] = True
    return out


def ndcg_at(scores: np.ndarray, target: np.ndarray, k: int = 10, n_relevant: np.ndarray | None = None
            ) -> np.ndarray:
    """Per-user NDCG@k of the ``target`` columns (one per user, -1 = none, or a ``U x C`` mask) among the
    row's finite scores, each at its expected rank among ties; the ideal DCG counts ``n_relevant`` items
    per user (default: the targets found), so held-out items that are no candidate count as misses."""
    hits = target_mask(target, scores.shape)
    n_rel = hits.sum(1) if n_relevant is None else np.asarray(n_relevant)
    out = np.zeros(len(scores))
    for u in np.flatnonzero(hits.any(1)):
        s = scores[u]
        t = s[hits[u]]
        rank = (s[None, :] > t[:, None]).sum(1) + 0.5 * ((s[None, :] == t[:, None]).sum(1) - 1)
        dcg = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).sum()
        idcg = (1.0 / np.log2(np.arange(min(int(n_rel[u]), k)) + 2.0)).sum()
        out[u] = dcg / max(idcg, 1e-12)
    return out


def cross_fit(x: np.ndarray, valid: np.ndarray, target: np.ndarray, folds: int = 2, **params) -> np.ndarray:
    """Out-of-fold head scores (``U x C``): each fold scored by a head trained on the other folds."""
    out = np.full(valid.shape, -np.inf, np.float32)
    fold = np.arange(len(x)) % folds
    for f in range(folds):
        tr = fold != f
        head = ListwiseHead(**params).fit(x[tr], valid[tr], target[tr])
        out[fold == f] = head.score(x[fold == f], valid[fold == f])
    return out
