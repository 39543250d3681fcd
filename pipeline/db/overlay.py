"""SQL of the near-real-time overlay (``recsys.recs_realtime``) that the publish and the refresh both run."""

from __future__ import annotations

#: Days of ``recsys.refresh_batches`` kept (the audit of exactly-once; older rows are pruned).
BATCH_LOG_DAYS = 7

#: Overlay rows no newer than every kept publication's oldest rows: no live or rolled-back-to view can show them.
STALE_OVERLAY_SQL = ("DELETE FROM recsys.recs_realtime WHERE generated_at <= "
                     "(SELECT min(coalesce(oldest_at, generated_at)) FROM recsys.publications)")
