"""The network: a SASRec-style self-attention encoder over the user's last N events, DIN-style target
attention from each candidate into that sequence, and an MLP over the candidate's side and recall features.

One forward pass scores a ``U x C`` block: C candidates for each of U sequences, so a user's sequence is
encoded once however many candidates it has (batch scoring of 300 candidates per user), and a training
group (1 positive + K negatives) is simply a row of the block: one code path for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Sizes of the network (part of the model's config digest)."""

    n_items: int
    n_cats: int
    n_tops: int
    n_brands: int
    n_prices: int
    n_sources: int
    n_gaps: int
    n_types: int = 5
    seq_len: int = 50
    dim: int = 32
    heads: int = 2
    layers: int = 1
    hidden: int = 64
    dropout: float = 0.1
    n_numeric: int = 6
    embedding_dim: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class RankerNet(nn.Module):
    """logit(P(positive action | sequence, candidate)) per candidate row."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.item = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.cat = nn.Embedding(cfg.n_cats, d, padding_idx=0)
        self.top = nn.Embedding(cfg.n_tops, d, padding_idx=0)
        self.brand = nn.Embedding(cfg.n_brands, d, padding_idx=0)
        self.price = nn.Embedding(cfg.n_prices, d, padding_idx=0)
        self.source = nn.Embedding(cfg.n_sources, d, padding_idx=0)
        self.etype = nn.Embedding(cfg.n_types, d, padding_idx=0)
        self.gap = nn.Embedding(cfg.n_gaps, d, padding_idx=0)
        self.pos = nn.Embedding(cfg.seq_len + 1, d)
        self.emb_proj = nn.Linear(cfg.embedding_dim, d, bias=False) if cfg.embedding_dim else None
        self.user_token = nn.Parameter(torch.zeros(1, 1, d))  # always-valid key: no all-masked rows
        # Side features of the trained items (for sequence tokens); filled by the model wrapper.
        for name in ("cat", "top", "brand", "price"):
            self.register_buffer(f"item_{name}", torch.zeros(cfg.n_items, dtype=torch.long))
        if cfg.embedding_dim:
            self.register_buffer("item_emb", torch.zeros(cfg.n_items, cfg.embedding_dim))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=2 * d, dropout=cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.num_norm = nn.LayerNorm(cfg.n_numeric)
        self.mlp = nn.Sequential(
            nn.Linear(6 * d + cfg.n_numeric, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden // 2), nn.GELU(), nn.Linear(cfg.hidden // 2, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for emb in (self.item, self.cat, self.top, self.brand, self.price, self.source, self.etype, self.gap,
                    self.pos):
            nn.init.normal_(emb.weight, std=0.05)
            if emb.padding_idx is not None:
                with torch.no_grad():
                    emb.weight[emb.padding_idx].zero_()

    def item_repr(self, item: torch.Tensor, cat: torch.Tensor, top: torch.Tensor, brand: torch.Tensor,
                  price: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Item id + side features (+ projected text/image embedding): unseen items still have a vector."""
        x = self.item(item) + self.cat(cat) + self.top(top) + self.brand(brand) + self.price(price)
        if self.emb_proj is not None and emb is not None:
            x = x + self.emb_proj(emb)
        return x

    def encode(self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor) -> tuple[torch.Tensor,
                                                                                         torch.Tensor]:
        """Sequences ``U x L`` -> (hidden states ``U x (L+1) x d``, key padding mask ``U x (L+1)``)."""
        emb = self.item_emb[items] if self.emb_proj is not None else None
        x = self.item_repr(items, self.item_cat[items], self.item_top[items], self.item_brand[items],
                           self.item_price[items], emb)
        x = x + self.etype(types) + self.gap(gaps)
        x = torch.cat([x, self.user_token.expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.pos.weight.unsqueeze(0)
        pad = torch.cat([items == 0, torch.zeros_like(items[:, :1], dtype=torch.bool)], dim=1)
        h = self.norm(self.encoder(x, src_key_padding_mask=pad))
        return h, pad

    def forward(self, seq: dict[str, torch.Tensor], cand: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``U x C``: candidate ``[u, c]`` of user ``u`` scored against the sequence ``seq[u]``."""
        h, pad = self.encode(seq["items"], seq["types"], seq["gaps"])
        return self.head(h, pad, cand)

    def head(self, h: torch.Tensor, pad: torch.Tensor, cand: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.item_repr(cand["item"], cand["cat"], cand["top"], cand["brand"], cand["price"],
                           cand.get("emb"))  # U x C x d
        u = h[:, -1:].expand(-1, c.shape[1], -1)  # the user token saw the whole sequence: SASRec's state
        att = torch.einsum("ucd,uld->ucl", self.q(c), h) / (self.cfg.dim ** 0.5)
        att = att.masked_fill(pad[:, None, :], float("-inf")).softmax(-1)
        ta = torch.einsum("ucl,uld->ucd", att, h)  # DIN: the part of the history relevant to this item
        x = torch.cat([c, u, u * c, ta, ta * c, self.source(cand["source"]), self.num_norm(cand["num"])], dim=-1)
        return self.mlp(x).squeeze(-1) + (u * c).sum(-1)


class SASRecNet(nn.Module):
    """SASRec (Kang & McAuley 2018): causal self-attention over item ids, tied input/output embeddings.

    Item index 0 is padding (catalogue index ``i`` is token ``i + 1``); sequences are left-padded and
    positions count from the end, so a batch can be trimmed to its longest sequence without changing any
    position. ``forward`` gives the hidden state after every position; ``logits`` scores item tokens.
    """

    def __init__(self, n_items: int, *, dim: int = 64, heads: int = 1, layers: int = 2, seq_len: int = 50,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.n_items, self.dim, self.heads, self.seq_len = n_items, dim, heads, seq_len
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(seq_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item.weight, std=dim ** -0.5)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``B x L`` item tokens (left-padded, L <= seq_len) -> ``B x L x dim`` causal hidden states."""
        B, L = seq.shape
        valid = seq > 0
        pos = torch.arange(L - 1, -1, -1, device=seq.device)  # distance from the end
        x = self.item(seq) * (self.dim ** 0.5) + self.pos(pos)[None]
        x = self.drop(x) * valid[..., None]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        # a query sees earlier non-padding keys and always itself (so no row is fully masked: no NaN)
        allowed = (causal[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=seq.device)[None]
        mask = torch.zeros(B, L, L, device=seq.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.heads, dim=0)
        return self.norm(self.encoder(x, mask=mask))

    def logits(self, h: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``h`` (``N x dim``) against item ``tokens`` (``N x C`` or ``C``), or all catalogue items."""
        if tokens is None:
            return h @ self.item.weight[1:].T
        e = self.item(tokens)
        if e.dim() == 2:
            return h @ e.T
        return torch.einsum("nd,ncd->nc", h, e)
