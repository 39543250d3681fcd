"""Embedded PostgreSQL under ``RERANK_HOME/pg`` for a machine with no server configured.

The server binaries come from the ``pgserver`` wheel (PostgreSQL 16) or, failing that, from a Debian-style
install (``/usr/lib/postgresql/<major>/bin``). PostgreSQL refuses to run as root, so as root the data
directory is owned by, and the server runs as, an unprivileged system user (``pgserver``'s own user for the
wheel, ``postgres`` for system binaries) through ``runuser``. The server listens on 127.0.0.1 only, on a
TCP port chosen at the first start (or ``RERANK_PG_PORT``), so the URL works for psql, SQLAlchemy, Dask
workers and Airflow alike. ``up`` is safe to call from several processes at once (a file lock).

Authentication is scram-sha-256 for every connection: the superuser's password is generated at ``initdb``
and kept in ``RERANK_HOME/secrets/postgres`` (mode 0600, folder 0700), so a local user who cannot read that
file cannot connect. A data directory made by an older version with ``trust`` is switched over on its next
start. The permissions of folders the project did not create are never changed: as root, when the server's
user cannot reach ``RERANK_HOME``, the server's folder lives under :data:`SERVER_OWNED_BASE` instead
(``rerank db status`` names it).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from filelock import FileLock

from pipeline.errors import EmbeddedPostgresError

DB_NAME = "rerank"
SUPERUSER = "postgres"
#: Server settings for a run's bulk loads and index builds, as the compose service and the RDS parameter group
#: set them (README, "Postgres for the publish"): the publish's (user_id, rank) index sorts in memory, and a
#: shop's COPY does not checkpoint every gigabyte of WAL. Only maintenance work takes the 1GB, while it runs.
SERVER_SETTINGS: dict[str, str] = {"maintenance_work_mem": "1GB", "max_wal_size": "4GB",
                                   "checkpoint_timeout": "15min", "work_mem": "64MB"}
#: As root, where the server's folder goes when its user cannot reach RERANK_HOME (one folder per home).
SERVER_OWNED_BASE = Path("/var/lib/ecom-rerank")
SECRETS_DIR = "secrets"


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` with mode 0600 (its folder 0700), never readable by others in between."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.replace(tmp, path)


def read_secret(path: Path) -> str | None:
    """The secret in ``path`` (None when the file does not exist)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def new_secret() -> str:
    """A random password that needs no quoting in a URL."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Binaries:
    """Where the server binaries are and which system user runs them (None: the current user)."""

    bin_dir: Path
    run_as: str | None
    origin: str

    @property
    def major(self) -> int:
        out = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        return int(out.split()[-1].split(".")[0])


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def find_binaries() -> Binaries:
    """The pgserver wheel's binaries, else a system install; raise a clear error when neither exists."""
    import warnings

    # pgserver asks platformdirs for a runtime dir at import; on servers without XDG_RUNTIME_DIR that warns
    # on every command although we never use that directory.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import ensure_folder_permissions, ensure_user_exists

        run_as = None
        if _is_root():
            run_as = "pgserver"
            ensure_user_exists(run_as)
            import stat

            # Only inside the wheel's own install folder; its parents (a virtualenv under /root, say) are
            # never widened: an unreachable install is an error that names the folder.
            read_perm = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read_perm)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read_perm)
            if not _reachable_by(run_as, POSTGRES_BIN_PATH / "postgres"):
                raise EmbeddedPostgresError(
                    f"the server user {run_as!r} cannot reach {POSTGRES_BIN_PATH}",
                    "install the project in a folder other users can traverse, or set RERANK_DATABASE_URL",
                )
        return Binaries(Path(POSTGRES_BIN_PATH), run_as, "pgserver wheel")
    except ImportError:
        pass
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    found = shutil.which("postgres")
    if candidates:
        bin_dir = candidates[0].parent
    elif found:
        bin_dir = Path(found).parent
    else:
        raise EmbeddedPostgresError(
            "no PostgreSQL server binaries found",
            "install the project (pgserver wheel) or a PostgreSQL server, or set RERANK_DATABASE_URL",
        )
    return Binaries(bin_dir, "postgres" if _is_root() else None, "system")


def _reachable_by(user: str, path: Path) -> bool:
    """Whether ``user`` can traverse every folder down to ``path`` (asked as that user, nothing changed)."""
    proc = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path)], capture_output=True,
                          cwd="/", timeout=30)
    return proc.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedPostgres:
    """One data directory, one server. ``up`` is idempotent; ``url`` is a libpq URI."""

    def __init__(self, home: Path, port: int = 0) -> None:
        self.home = Path(home).expanduser().resolve()
        self.root = self._server_root(self.home)
        self.pgdata = self.root / "data"
        self.log = self.root / "server.log"
        self.port_file = self.root / "port"
        self.secret_file = self.home / SECRETS_DIR / SUPERUSER
        self.requested_port = port
        self._lock = FileLock(str(self.home / "pg") + ".lock", timeout=120)

    @staticmethod
    def _server_root(home: Path) -> Path:
        """``home/pg``, except as root when the server's user cannot reach ``home`` (a 0700 folder such as
        /root): then a folder of its own under :data:`SERVER_OWNED_BASE`, keyed by the home's path."""
        inside = home / "pg"
        if not _is_root() or (inside / "data" / "PG_VERSION").exists():
            return inside
        outside = SERVER_OWNED_BASE / ("pg-" + hashlib.sha256(str(home).encode()).hexdigest()[:16])
        if outside.exists():
            return outside
        try:
            user = find_binaries().run_as  # creates the wheel's system user on a fresh machine
        except EmbeddedPostgresError:
            return inside  # no server to run: `up` names the problem
        probe = home if home.exists() else next(p for p in home.parents if p.exists())
        return inside if user is None or _reachable_by(user, probe) else outside

    # -- helpers -------------------------------------------------------------------------------------
    def _run(self, bins: Binaries, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(bins.bin_dir / exe), *args]
        if bins.run_as:
            cmd = ["runuser", "-u", bins.run_as, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        return proc

    def _postmaster_port(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def is_running(self) -> bool:
        port = self._postmaster_port()
        return port is not None and _port_in_use(port)

    def url(self, database: str = DB_NAME) -> str:
        port = self._postmaster_port()
        if port is None:
            raise EmbeddedPostgresError(f"the embedded server under {self.root} is not running", "rerank db up")
        secret = read_secret(self.secret_file)
        if secret is None:
            raise EmbeddedPostgresError(f"the embedded server's password file {self.secret_file} is missing",
                                        f"restore it, or move {self.root} aside and run `rerank db up`")
        return f"postgresql://{SUPERUSER}:{quote(secret, safe='')}@127.0.0.1:{port}/{database}"

    def _check_version(self, bins: Binaries) -> None:
        version_file = self.pgdata / "PG_VERSION"
        if version_file.exists():
            have = int(version_file.read_text().strip().split(".")[0])
            if have != bins.major:
                raise EmbeddedPostgresError(
                    f"data directory {self.pgdata} was made by PostgreSQL {have}, "
                    f"but the available server ({bins.origin}) is PostgreSQL {bins.major}",
                    f"dump it with PostgreSQL {have}'s pg_dump, or move {self.root} aside and run `rerank db up`",
                )

    # -- lifecycle -----------------------------------------------------------------------------------
    def up(self) -> str:
        """Initialise (first time) and start the server; return its URL. Safe under concurrency."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.root.parent == SERVER_OWNED_BASE:
                SERVER_OWNED_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.root.mkdir(mode=0o700, exist_ok=True)
            if self.is_running():
                if self._trusts_everyone():
                    self._require_password(find_binaries())
                return self.url()
            bins = find_binaries()
            self._check_version(bins)
            if bins.run_as:
                self._chown_tree(bins.run_as)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(bins)
            legacy = self._trusts_everyone()
            self._start(bins)
            if legacy:
                self._require_password(bins)
            self._ensure_database(bins)
            return self.url()

    def _initdb(self, bins: Binaries) -> None:
        """A new cluster whose superuser logs in with a generated password (scram-sha-256, no trust)."""
        self.pgdata.mkdir(exist_ok=True)
        if bins.run_as:
            self._chown_tree(bins.run_as)
        secret = new_secret()
        # initdb runs as the server's user: it reads the password from a 0600 file of its own, removed after.
        pwfile = self.root / ".initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        try:
            if bins.run_as:
                self._chown_tree(bins.run_as)
            proc = self._run(
                bins, "initdb", "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {proc.stderr.strip()[-500:]}", str(self.pgdata))
        write_secret(self.secret_file, secret)

    def _hba(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    def _trusts_everyone(self) -> bool:
        """Whether pg_hba.conf (from a version that ran ``initdb --auth=trust``) lets anyone in."""
        try:
            lines = self._hba().read_text().splitlines()
        except FileNotFoundError:
            return False
        return any(ln.split()[-1:] == ["trust"] for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))

    def _require_password(self, bins: Binaries) -> None:
        """Switch a trust cluster to scram-sha-256: set a generated superuser password, then reload."""
        import psycopg2

        secret = read_secret(self.secret_file) or new_secret()
        port = self._postmaster_port()
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SET password_encryption = 'scram-sha-256'")
                cur.execute(f"ALTER ROLE {SUPERUSER} PASSWORD %s", (secret,))
        finally:
            conn.close()
        write_secret(self.secret_file, secret)
        hba = self._hba()
        stat = hba.stat()
        text = "\n".join(
            ln if ln.lstrip().startswith("#") or ln.split()[-1:] != ["trust"] else ln.rsplit("trust", 1)[0]
            + "scram-sha-256" for ln in hba.read_text().splitlines()
        )
        hba.write_text(text + "\n")
        os.chown(hba, stat.st_uid, stat.st_gid)
        proc = self._run(bins, "pg_ctl", "-D", str(self.pgdata), "reload", timeout=60)
        if proc.returncode != 0:
            raise EmbeddedPostgresError(f"pg_ctl reload failed: {proc.stderr.strip()}", str(self.log))
        time.sleep(0.5)

    def _chown_tree(self, user: str) -> None:
        """Give the server's own folder (created by the project) to its user; nothing above it changes."""
        import pwd

        entry = pwd.getpwnam(user)
        for path in [self.root, *self.root.rglob("*")]:
            try:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
            except FileNotFoundError:
                continue

    def _start(self, bins: Binaries) -> None:
        port = self.requested_port or (int(self.port_file.read_text()) if self.port_file.exists() else 0)
        if port and _port_in_use(port):
            if self.requested_port:
                raise EmbeddedPostgresError(
                    f"port {port} on 127.0.0.1 is taken by another process", "set RERANK_PG_PORT to a free port or 0"
                )
            port = 0  # the remembered port was taken meanwhile: pick another
        last_err = ""
        for _ in range(3):
            port = port or _free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=on"
            opts += "".join(f" -c {k}={v}" for k, v in SERVER_SETTINGS.items())
            proc = self._run(bins, "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60",
                             "-o", opts, "start", timeout=90)
            if proc.returncode == 0:
                self.port_file.write_text(str(port))
                for _ in range(50):
                    if self.is_running():
                        return
                    time.sleep(0.1)
            last_err = (proc.stderr or proc.stdout).strip()[-300:]
            if self.log.exists():
                last_err += " | " + self.log.read_text()[-300:]
            port = 0
        raise EmbeddedPostgresError(f"the embedded PostgreSQL did not start: {last_err}", str(self.log))

    def _ensure_database(self, bins: Binaries) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.url("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
        finally:
            conn.close()

    def down(self) -> bool:
        """Stop the server (fast shutdown). Returns False when it was not running."""
        with self._lock:
            if not self.is_running():
                return False
            bins = find_binaries()
            proc = self._run(bins, "pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", timeout=60)
            if proc.returncode != 0:
                raise EmbeddedPostgresError(f"pg_ctl stop failed: {proc.stderr.strip()}", str(self.log))
            return True

    def status(self) -> dict[str, object]:
        running = self.is_running()
        return {
            "data_dir": str(self.pgdata),
            "secret_file": str(self.secret_file),
            "initialised": (self.pgdata / "PG_VERSION").exists(),
            "running": running,
            "url": self.url() if running else None,
        }
