"""Constants of the ranker's integration tests (fixtures: ``conftest.py``)."""

from datetime import UTC, datetime

from pipeline.rank.model import RankerConfig

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
RUN = "nightly_20261124T0000"
CFG = RankerConfig(dim=16, heads=2, hidden=32, seq_len=10, n_recall_neg=6, n_random_neg=2, max_epochs=4,
                   patience=2, batch_groups=64)
