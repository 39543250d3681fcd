"""Login roles for deployments: a pipeline login in ``rerank_writer`` and an app login in ``rerank_reader``.

The migrations create the two group roles (NOLOGIN); ``rerank db migrate --create-logins`` adds one login to
each, so that nothing but migrations runs as the owner. Each password comes from its setting
(``RERANK_PIPELINE_DB_PASSWORD``, ``RERANK_APP_DB_PASSWORD``: a deployment's secret store), else from the
file ``RERANK_HOME/secrets/<login>`` kept by an earlier call, else it is generated and written there
(mode 0600). Running it again re-applies the same passwords (or the new ones the settings give: a rotation).
The logins get no superuser, CREATEROLE or CREATEDB right; all they may do comes from their group role.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg2 import sql

from pipeline.db.embedded import SECRETS_DIR, new_secret, read_secret, write_secret
from pipeline.db.engine import connect

PIPELINE_LOGIN = "rerank_pipeline"
APP_LOGIN = "rerank_app"
#: login -> the group role it is a member of
LOGINS: dict[str, str] = {PIPELINE_LOGIN: "rerank_writer", APP_LOGIN: "rerank_reader"}


@dataclass(frozen=True)
class Login:
    """A login role, its group role and where its password is kept (None: it came from a setting)."""

    name: str
    member_of: str
    password: str
    secret_file: Path | None


def secret_path(home: Path, login: str) -> Path:
    """Where the password of ``login`` is kept under ``RERANK_HOME``."""
    return Path(home) / SECRETS_DIR / login


def create_logins(url: str, home: Path, passwords: dict[str, str | None] | None = None) -> list[Login]:
    """Create (or update) the pipeline and app logins on the server of ``url`` (a role with CREATEROLE)."""
    passwords = passwords or {}
    made = []
    for login, group in LOGINS.items():
        given = passwords.get(login)
        path = secret_path(home, login)
        password = given or read_secret(path) or new_secret()
        if not given:
            write_secret(path, password)
        made.append(Login(login, group, password, None if given else path))
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL password_encryption = 'scram-sha-256'")
        cur.execute("SELECT current_database()")
        database = cur.fetchone()[0]
        for login in made:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login.name,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                "NOBYPASSRLS INHERIT PASSWORD {}").format(
                sql.Identifier(login.name), sql.Literal(login.password)))
            cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(login.member_of), sql.Identifier(login.name)))
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(login.name)))
        # The pipeline checks the schema revision before a run (pipeline.db.migrate.require_schema).
        cur.execute("GRANT SELECT ON public.alembic_version TO rerank_writer")
    return made


def login_url(url: str, login: Login | str, password: str | None = None) -> str:
    """``url`` with the user and password of ``login`` instead of its own."""
    name = login.name if isinstance(login, Login) else login
    secret = login.password if isinstance(login, Login) else password
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    auth = quote(name, safe="") + (f":{quote(secret, safe='')}" if secret else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))
