"""generate_shop against a real PostgreSQL: counts, idempotence, ground truth, argument checks."""

from __future__ import annotations

import pytest

from pipeline.datagen import generate_shop
from pipeline.db.engine import connect
from pipeline.errors import ConfigError

pytestmark = pytest.mark.integration

SIZES = {"users": 300, "items": 100, "days": 10}


def _snapshot(url: str) -> dict[str, tuple]:
    """Counts plus an order-independent checksum of every generated table."""
    out = {}
    with connect(url) as conn, conn.cursor() as cur:
        for table in ["shop.users", "shop.items", "shop.events", "datagen.user_tastes"]:
            cur.execute(f"SELECT count(*), coalesce(sum(hashtext(t::text)::numeric), 0) FROM {table} t")
            out[table] = cur.fetchone()
    return out


def test_generate_loads_what_it_reports_and_is_idempotent(db_url: str) -> None:
    stats = generate_shop(db_url, seed=11, **SIZES)
    assert (stats.users, stats.items) == (300, 100)
    assert stats.events > 5_000 and stats.tastes > 300
    first = _snapshot(db_url)
    assert first["shop.users"][0] == stats.users
    assert first["shop.items"][0] == stats.items
    assert first["shop.events"][0] == stats.events
    assert first["datagen.user_tastes"][0] == stats.tastes

    again = generate_shop(db_url, seed=11, **SIZES)
    assert (again.users, again.items, again.events, again.tastes) == (
        stats.users, stats.items, stats.events, stats.tastes)
    assert _snapshot(db_url) == first


def test_loaded_rows_keep_time_order_and_the_contract(db_url: str) -> None:
    generate_shop(db_url, seed=5, **SIZES)
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.events e JOIN shop.users u USING (user_id) "
                    "WHERE e.ts < u.created_at")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM shop.events e JOIN shop.items i USING (item_id) "
                    "WHERE e.ts < i.created_at")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM shop.events WHERE (event_type = 'search') <> (item_id IS NULL)")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT max(ts) < timestamptz '2026-11-24 00:00+00', "
                    "min(ts) >= timestamptz '2026-11-14 00:00+00' FROM shop.events")
        assert cur.fetchone() == (True, True)
        cur.execute("SELECT count(*) FROM shop.items WHERE title ~ '[一-龥]'")
        assert cur.fetchone()[0] > 0
        cur.execute("SELECT count(*) FROM shop.users u WHERE NOT EXISTS "
                    "(SELECT 1 FROM datagen.user_tastes t WHERE t.user_id = u.user_id)")
        assert cur.fetchone() == (0,)


@pytest.mark.parametrize("bad", [{"users": 0}, {"items": -5}, {"days": 0}])
def test_bad_arguments_raise_config_error_and_write_nothing(db_url: str, bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        generate_shop(db_url, **(SIZES | bad))
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.events")
        assert cur.fetchone() == (0,)
