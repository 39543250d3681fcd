"""Offline checks of the deployment files: parsed, never run (no Docker engine, no cluster here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def load_yaml(path: Path) -> dict:
    with path.open() as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="session")
def compose() -> dict:
    return load_yaml(REPO / "docker-compose.yml")


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    """KEY=VALUE lines of .env.example (comments and blanks skipped)."""
    out: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            assert key not in out, f".env.example sets {key} twice"
            out[key] = value
    return out


@pytest.fixture(scope="session")
def dag_constants() -> dict[str, object]:
    """The literal constants of dags/_common.py, read without importing Airflow (keeps these checks fast)."""
    out: dict[str, object] = {}
    for node in ast.parse((REPO / "dags" / "_common.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and hasattr(node.targets[0], "id"):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


#: The secrets of .env.example: empty there, compose refuses to start without them.
SECRETS = ("POSTGRES_PASSWORD", "PIPELINE_DB_PASSWORD", "APP_DB_PASSWORD", "AIRFLOW_DB_PASSWORD",
           "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET")
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: object, env: dict[str, str]) -> object:
    """``value`` with compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` resolved from ``env``
    (a ``:?`` on a missing or empty variable raises, as ``docker compose config`` does)."""
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name)
        if op and op.endswith("?") and not got:
            raise LookupError(f"{name}: {arg}")
        if op and op.endswith("-") and not got:
            return arg
        return got or ""

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="session")
def filled_env(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example with every secret set, as an operator's .env."""
    return {**env_example, **{name: f"s3cret-{name.lower()}" for name in SECRETS}}
