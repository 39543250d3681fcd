"""Secrets reach remote Dask workers through their environment, never as task arguments."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipeline.db.engine import with_local_password, without_password
from pipeline.errors import DatabaseError
from pipeline.extract.snapshot import extract_snapshot

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)


class RemoteClient:
    """A stand-in for a ``distributed.Client`` connected to an external scheduler (no ``cluster`` of its own):
    records each task's arguments, runs the tasks here."""

    cluster = None

    def __init__(self) -> None:
        self.args: list[tuple] = []

    def scheduler_info(self) -> dict:
        return {"workers": {"w1": {}, "w2": {}}}

    def map(self, fn, *iterables, pure: bool = True, **kwargs):  # noqa: ANN001, ANN201
        calls = list(zip(*iterables, strict=True))
        self.args.extend(calls)
        return [lambda c=c: fn(*c, **kwargs) for c in calls]

    def gather(self, futures):  # noqa: ANN001, ANN201
        return [f() for f in futures]


def test_password_helpers() -> None:
    url = "postgresql://rerank_pipeline:s3cret@db.internal:5432/shop?sslmode=require"
    bare = without_password(url)
    assert bare == "postgresql://rerank_pipeline@db.internal:5432/shop?sslmode=require"
    assert without_password(bare) == bare


def test_with_local_password_only_for_the_same_login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_DATABASE_URL", "postgresql://rerank_pipeline:s3cret@db.internal:5432/shop")
    assert with_local_password("postgresql://rerank_pipeline@db.internal:5432/shop?sslmode=require") == \
        "postgresql://rerank_pipeline:s3cret@db.internal:5432/shop?sslmode=require"
    for other in ("postgresql://rerank@db.internal:5432/shop", "postgresql://rerank_pipeline@evil:5432/shop",
                  "postgresql://rerank_pipeline@db.internal:5432/other"):
        assert with_local_password(other) == other  # never handed to another user, host or database
    monkeypatch.delenv("RERANK_DATABASE_URL")
    assert with_local_password("postgresql://u@h:1/d") == "postgresql://u@h:1/d"


def test_a_remote_cluster_gets_the_url_without_its_password(rerank_env: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.datagen import generate_shop

    url = rerank_env["RERANK_DATABASE_URL"]
    password = urlsplit(url).password
    assert password
    generate_shop(url, users=60, items=30, days=4, seed=2, end=AS_OF)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    client = RemoteClient()
    res = extract_snapshot(url, tmp_path / "snap", AS_OF, client, store_url=f"file://{tmp_path / 'store'}")
    assert res["events"] > 0 and client.args
    assert all(password not in repr(a) for a in client.args)  # what went over the wire
    assert all(urlsplit(a[0]).username == urlsplit(url).username for a in client.args)
    # a worker whose environment lacks the secret cannot connect: the password really did not travel
    monkeypatch.delenv("RERANK_DATABASE_URL")
    with pytest.raises(DatabaseError, match="password"):
        extract_snapshot(url, tmp_path / "snap2", AS_OF, RemoteClient(), store_url=f"file://{tmp_path / 'store2'}")
