"""The refresh remembers the gaps it holds back at, so it can tell when they are for good.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

``recsys.refresh_state.hold_below`` / ``hold_writers``: when a batch finds a gap in the event ids (an id not
visible yet below one that is), it records the highest id it saw and the transactions that were writing to
``shop.events`` right after. Once none of those transactions is still running, no gap below ``hold_below``
can be filled any more (a rolled-back insert, an id never used), and the watermark may pass it
(pipeline/refresh/core.py, "Commit order").
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE recsys.refresh_state ADD COLUMN IF NOT EXISTS hold_below bigint;
        ALTER TABLE recsys.refresh_state ADD COLUMN IF NOT EXISTS hold_writers text[];
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE recsys.refresh_state DROP COLUMN IF EXISTS hold_below;
        ALTER TABLE recsys.refresh_state DROP COLUMN IF EXISTS hold_writers;
        """
    )
