"""The embedded PostgreSQL: concurrent `up`, a taken port, a data directory from another major version."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from pipeline.db.embedded import SERVER_SETTINGS, EmbeddedPostgres
from pipeline.errors import EmbeddedPostgresError

pytestmark = pytest.mark.integration


@pytest.fixture
def home() -> Iterator[Path]:
    # A private 0700 folder: as root the server's data then lives in a folder of its own, outside it.
    path = Path(tempfile.mkdtemp(prefix="rerank-test-home-"))
    yield path
    pg = EmbeddedPostgres(path)
    if pg.is_running():
        pg.down()
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(pg.root, ignore_errors=True)  # as root, the server's folder may live outside ``path``


def test_two_processes_calling_up_at_once_share_one_server(home: Path) -> None:
    code = f"from pipeline.db.embedded import EmbeddedPostgres; print(EmbeddedPostgres({str(home)!r}).up())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    urls = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        urls.append(out.strip().splitlines()[-1])
    assert urls[0] == urls[1]
    conn = psycopg2.connect(urls[0])
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone() == ("rerank",)
        # the publish's settings, as the compose service sets them
        for name, value in SERVER_SETTINGS.items():
            cur.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
            assert cur.fetchone()[0] == value, name
    conn.close()
    pg = EmbeddedPostgres(home)
    assert pg.status()["running"] is True
    assert pg.down() is True
    assert pg.status()["running"] is False
    assert pg.down() is False


def test_up_again_after_down_reuses_the_data(home: Path) -> None:
    pg = EmbeddedPostgres(home)
    conn = psycopg2.connect(pg.up())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    conn.close()
    pg.down()
    conn = psycopg2.connect(pg.up())
    with conn.cursor() as cur:
        cur.execute("SELECT x FROM kept")
        assert cur.fetchone() == (7,)
    conn.close()


def test_a_taken_port_is_named(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EmbeddedPostgresError, match=f"port {port} .* is taken"):
            EmbeddedPostgres(home, port=port).up()


def test_remembered_port_taken_meanwhile_picks_another(home: Path) -> None:
    pg = EmbeddedPostgres(home)
    first = pg.up()
    pg.down()
    port = int(pg.port_file.read_text())
    with socket.socket() as s:
        # The stopped server's closed connections leave TIME_WAIT entries on this port; without SO_REUSEADDR
        # (which Postgres sets on its own listener) this bind failed with EADDRINUSE on a busy machine.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        second = pg.up()
    assert second != first and f":{port}/" not in second


def test_data_directory_from_another_major_version_is_a_clear_error(home: Path) -> None:
    data = home / "pg" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("11\n")
    with pytest.raises(EmbeddedPostgresError, match="made by PostgreSQL 11"):
        EmbeddedPostgres(home).up()


def _evaluate_tiny(home: Path) -> subprocess.CompletedProcess:
    data = home / "Tiny.txt"
    data.write_text("".join(f"{u} {u % 5 + 1} {u % 7 + 6} {u % 3 + 13} {u % 4 + 16}\n" for u in range(1, 31)))
    env = {k: v for k, v in os.environ.items() if k != "RERANK_DATABASE_URL"}
    env["RERANK_HOME"] = str(home)
    rerank = str(Path(sys.executable).with_name("rerank"))
    return subprocess.run([rerank, "evaluate", "--format", "amazon-s3rec", "--path", str(data), "--protocol",
                           "leave-one-out", "--models", "popularity", "--out", str(home / "out")],
                          capture_output=True, text=True, timeout=600, env=env)


def test_evaluate_stops_the_embedded_server_it_started_and_only_that(home: Path) -> None:
    pg = EmbeddedPostgres(home)
    proc = _evaluate_tiny(home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (home / "out" / "metrics.json").exists()
    assert not pg.is_running()  # started for the throwaway database, stopped after it
    pg.up()  # a server somebody started stays up, and the throwaway database is gone from it
    proc = _evaluate_tiny(home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pg.is_running()
    conn = psycopg2.connect(pg.url("postgres"))
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'rerank_eval_%'")
        assert cur.fetchone()[0] == 0
    conn.close()


def _connect_without_secret(url: str, **overrides: object) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    kwargs = {"host": parts.hostname, "port": parts.port, "user": parts.username, "dbname": "rerank",
              "connect_timeout": 10, **overrides}
    psycopg2.connect(**kwargs).close()


def test_a_connection_without_the_secret_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(home / "no-such-passfile"))
    pg = EmbeddedPostgres(home)
    url = pg.up()
    assert ":@" not in url and pg.secret_file.read_text().strip() in url
    with pytest.raises(psycopg2.OperationalError, match="password"):
        _connect_without_secret(url)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _connect_without_secret(url, password="not-the-secret")
    with pytest.raises(psycopg2.OperationalError, match="password"):
        _connect_without_secret(url, user="pgserver")  # the server's OS user gets no free pass either
    conn = psycopg2.connect(url)  # the printed URL works
    conn.close()
    mode = pg.secret_file.stat().st_mode & 0o777
    assert mode == 0o600 and pg.secret_file.stat().st_uid == os.getuid()
    assert pg.secret_file.parent.stat().st_mode & 0o777 == 0o700
    hba = [ln.split() for ln in (pg.pgdata / "pg_hba.conf").read_text().splitlines()
           if ln.strip() and not ln.startswith("#")]
    assert hba and {ln[-1] for ln in hba} == {"scram-sha-256"}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the server's own user exists as root")
def test_the_servers_os_user_cannot_read_the_secret(home: Path) -> None:
    pg = EmbeddedPostgres(home)
    pg.up()
    proc = subprocess.run(["runuser", "-u", "pgserver", "--", "cat", str(pg.secret_file)], capture_output=True,
                          text=True, cwd="/")
    assert proc.returncode != 0 and "denied" in proc.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="permissions are widened only as root")
def test_folders_the_project_did_not_create_keep_their_permissions(home: Path) -> None:
    private = home / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    inner = private / "rerank-home"
    pg = EmbeddedPostgres(inner)
    try:
        conn = psycopg2.connect(pg.up())
        conn.close()
        assert private.stat().st_mode & 0o777 == 0o700
        assert home.stat().st_mode & 0o777 == 0o700  # mkdtemp's folder, untouched too
        assert not pg.root.is_relative_to(private)  # the server's user cannot reach it: data lives elsewhere
        assert pg.root.stat().st_mode & 0o777 == 0o700
        assert pg.secret_file.is_relative_to(inner)
    finally:
        pg.down()
        shutil.rmtree(pg.root, ignore_errors=True)


def test_a_trust_cluster_from_an_older_version_is_switched_to_passwords(home: Path) -> None:
    pg = EmbeddedPostgres(home)
    pg.up()
    pg.down()
    hba = pg.pgdata / "pg_hba.conf"
    owner = hba.stat()
    text = hba.read_text().replace("scram-sha-256", "trust")
    hba.write_text(text)
    os.chown(hba, owner.st_uid, owner.st_gid)
    pg.secret_file.unlink()
    url = pg.up()
    assert "trust" not in [ln.split()[-1] for ln in hba.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    with pytest.raises(psycopg2.OperationalError, match="password"):
        _connect_without_secret(url, password="")
    psycopg2.connect(url).close()


def test_cli_db_url_works_and_db_status_hides_the_secret(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env["RERANK_HOME"] = str(home)
    rerank = str(Path(sys.executable).with_name("rerank"))

    def run(*args: str) -> str:
        proc = subprocess.run([rerank, "db", *args], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    url = run("url").strip().splitlines()[-1]
    conn = psycopg2.connect(url)
    conn.close()
    secret = EmbeddedPostgres(home).secret_file.read_text().strip()
    status = run("status")
    assert '"running": true' in status and secret not in status and ":***@" in status
    assert run("down").strip() == "stopped"
