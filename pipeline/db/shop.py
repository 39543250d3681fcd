"""Writing a whole shop (users, items, events) and quarantined rows through COPY."""

from __future__ import annotations

import json
import re

import pandas as pd

from pipeline.db.copy import copy_frame
from pipeline.frames import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS, ShopFrames


def _jsonify(col: pd.Series) -> pd.Series:
    return col.map(lambda v: v if isinstance(v, str) or v is None else json.dumps(v, ensure_ascii=False))


def _prepare(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = pd.DataFrame({c: df[c] if c in df.columns else None for c in columns})
    if "attrs" in out.columns:
        out["attrs"] = _jsonify(out["attrs"].where(out["attrs"].notna(), "{}"))
    return out


def shop_rows(url: str) -> dict[str, int]:
    """Whether ``shop.*`` holds data: ``{table: 1 or 0}`` from a cheap EXISTS per table (no full count)."""
    from pipeline.db.engine import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM (SELECT 1 FROM shop.users LIMIT 1) u), "
                    "(SELECT count(*) FROM (SELECT 1 FROM shop.items LIMIT 1) i), "
                    "(SELECT count(*) FROM (SELECT 1 FROM shop.events LIMIT 1) e)")
        users, items, events = cur.fetchone()
    return {"users": users, "items": items, "events": events}


def load_shop(cur, frames: ShopFrames, *, replace: bool = True) -> dict[str, int]:
    """COPY a shop into ``shop.*`` (truncating first when ``replace``, so a reload is idempotent)."""
    if replace:
        # impressions describe the old shop's users and items: they go with it
        cur.execute("TRUNCATE shop.events, shop.items, shop.users, shop.impressions")
    counts = {
        "users": copy_frame(cur, "shop.users", _prepare(frames.users, USER_COLUMNS)),
        "items": copy_frame(cur, "shop.items", _prepare(frames.items, ITEM_COLUMNS)),
        "events": copy_frame(cur, "shop.events", _prepare(frames.events, EVENT_COLUMNS)),
    }
    cur.execute("ANALYZE shop.users; ANALYZE shop.items; ANALYZE shop.events")
    return counts


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _safe_json(raw: object) -> str:
    """JSON text Postgres jsonb accepts: no NUL characters, invalid UTF-8 already replaced."""
    text = json.dumps(raw, ensure_ascii=False, default=str)
    # only a real escape of NUL (an even run of backslashes before it): a literal "\u0000" in the data is
    # already written as an escaped backslash and must stay as it is
    return _NUL_ESCAPE.sub(r"\1\\\\u0000", text)


def quarantine(cur, rejects: pd.DataFrame, run_id: str) -> int:
    """Store refused rows with their reasons in ``recsys.quarantine``; returns the count."""
    if rejects is None or rejects.empty:
        return 0
    out = pd.DataFrame(
        {
            "source": rejects["source"].astype(str),
            "raw": rejects["raw"].map(_safe_json),
            "reason": rejects["reason"].astype(str).str.replace("\x00", "\\0", regex=False),
            "run_id": run_id,
        }
    )
    return copy_frame(cur, "recsys.quarantine", out)


__all__ = ["load_shop", "quarantine"]
