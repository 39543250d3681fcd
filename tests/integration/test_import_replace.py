"""`rerank import` asks before replacing a non-empty shop; without a terminal it refuses unless --replace."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.db.engine import connect

pytestmark = pytest.mark.integration
RERANK = str(Path(sys.executable).with_name("rerank"))


def _csv(path: Path, users: int) -> Path:
    rows = [f"{u},{u % 5 + 1},view,2026-11-{u % 20 + 1:02d}T10:00:00" for u in range(1, users + 1)]
    path.write_text("user_id,item_id,event_type,ts\n" + "\n".join(rows) + "\n")
    return path


def _env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_") and k != "CI"}
    return {**env, "RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(home), **extra}


def _users(db_url: str) -> int:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.users")
        return cur.fetchone()[0]


def _import(path: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([RERANK, "import", "csv", str(path), *flags], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def _import_on_a_terminal(path: Path, env: dict[str, str], answer: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([RERANK, "import", "csv", str(path)], env=env, stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    os.close(slave)
    os.write(master, answer.encode() + b"\n")
    out, err = proc.communicate(timeout=300)
    os.close(master)
    return proc.returncode, err


def test_a_non_empty_shop_is_replaced_only_when_asked(db_url: str, tmp_path: Path) -> None:
    env = _env(db_url, tmp_path / "home")
    first = _import(_csv(tmp_path / "a.csv", 10), env)
    assert first.returncode == 0, first.stderr  # an empty shop: nothing to ask
    assert _users(db_url) == 10
    second = _csv(tmp_path / "b.csv", 4)
    for extra in ({}, {"CI": "true"}):  # no terminal (stdin from /dev/null), or CI: refuse, never hang
        proc = _import(second, {**env, **extra})
        assert proc.returncode == 1
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "already hold data" in lines[0] and "--replace" in lines[0], proc.stderr
        assert _users(db_url) == 10
    code, err = _import_on_a_terminal(second, env, "n")
    assert code == 1 and "Replace?" in err and "import cancelled" in err
    assert _users(db_url) == 10
    code, err = _import_on_a_terminal(second, env, "y")
    assert code == 0, err
    assert _users(db_url) == 4
    proc = _import(_csv(tmp_path / "c.csv", 7), env, "--replace")
    assert proc.returncode == 0, proc.stderr
    assert _users(db_url) == 7
