"""Near-real-time refresh by watermark (ARCHITECTURE.md, "The near-real-time refresh")."""

from pipeline.refresh.core import DEFAULT_BATCH_SIZE, DEFAULT_LOCK_KEY, pending, refresh_once
from pipeline.refresh.follow import CHANNEL, follow

__all__ = ["CHANNEL", "DEFAULT_BATCH_SIZE", "DEFAULT_LOCK_KEY", "follow", "pending", "refresh_once"]
