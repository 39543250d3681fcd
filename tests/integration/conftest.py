"""Fixtures shared by the integration tests (the ranker's constants live in ``rank_common``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rank_common import AS_OF, RUN


@pytest.fixture
def one_torch_thread():
    """Two cores shared by several test processes: one intra-op thread (CPU sums also depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def snapshot(rerank_env: dict[str, str]) -> Path:
    """A run snapshot written straight from a generated shop (the extract stage's file layout); the recall
    tests define their own."""
    from pipeline.datagen.build import build_shop

    shop, _ = build_shop(300, 100, 8, seed=11, end=AS_OF)
    snap = Path(rerank_env["RERANK_HOME"]) / "runs" / RUN / "snapshot"
    (snap / "events").mkdir(parents=True)
    shop.events.to_parquet(snap / "events" / "part.0.parquet", index=False)
    shop.items.drop(columns=["attrs", "description", "image_path"]).to_parquet(snap / "items.parquet", index=False)
    shop.users[["user_id", "created_at"]].to_parquet(snap / "users.parquet", index=False)
    return snap
