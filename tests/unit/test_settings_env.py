"""Settings: a misspelt RERANK_* variable is refused with the closest valid name; the CLI's closed choices."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import check_environment, load_settings, setting_names


@pytest.mark.parametrize(("key", "suggestion"), [("RERANK_TOPN", "RERANK_TOP_N"),
                                                  ("RERANK_DATABSE_URL", "RERANK_DATABASE_URL"),
                                                  ("rerank_keep_run", "RERANK_KEEP_RUNS"),
                                                  ("RERANK_DASK_ADRESS", "RERANK_DASK_ADDRESS")])
def test_a_misspelt_setting_names_the_closest_valid_one(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown setting {key} \\(did you mean {suggestion}\\?\\)"):
        check_environment({key: "1", "RERANK_TOP_N": "5"})


def test_a_name_close_to_nothing_is_refused_without_a_guess() -> None:
    with pytest.raises(ConfigError) as info:
        check_environment({"RERANK_XYZZY": "1"})
    assert "RERANK_XYZZY" in str(info.value) and "did you mean" not in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_names_and_the_test_suites_hooks_pass() -> None:
    env = {name: "x" for name in setting_names()}
    env.update({"RERANK_TEST_DATABASE_URL": "postgresql://x/y", "RERANK_TEST_PUBLISH_PAUSE_AT": "after_swap",
                "AIRFLOW_CONN_RERANK_POSTGRES": "postgresql://x/y", "PATH": "/bin"})
    check_environment(env)
    assert {"RERANK_SHARED_DATA", "RERANK_PG_PORT", "RERANK_HOME", "RERANK_DATABASE_URL"} <= set(env)


def test_load_settings_refuses_the_environment_s_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_TOP_M", "5")
    with pytest.raises(ConfigError, match="RERANK_TOP_M \\(did you mean RERANK_TOP_N\\?\\)"):
        load_settings()
    monkeypatch.delenv("RERANK_TOP_M")
    monkeypatch.setenv("RERANK_TOP_N", "5")
    assert load_settings().top_n == 5


def test_the_cli_choices_are_the_library_s_own_lists() -> None:
    from pipeline import cli
    from pipeline.datagen.build import TIERS
    from pipeline.evaluate.protocols import PROTOCOLS
    from pipeline.ingest.importer import FORMATS
    from pipeline.nightly import STAGES

    assert [t.value for t in cli.Tier] == list(TIERS)
    assert [f.value for f in cli.Format] == list(FORMATS)
    assert [p.value for p in cli.Protocol] == list(PROTOCOLS)
    assert [s.value for s in cli.Stage] == list(STAGES)


def test_a_dot_env_file_is_not_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The docs say so: .env is docker compose's (container paths); settings come from the environment only.
    (tmp_path / ".env").write_text("RERANK_TOP_N=7\nRERANK_TOPN=1\nRERANK_HOME=/opt/rerank/home\n")
    monkeypatch.chdir(tmp_path)
    for key in ("RERANK_TOP_N", "RERANK_HOME"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings()
    assert s.top_n == 50 and s.home == ".rerank"


def test_a_settings_profile_reads_known_keys_and_refuses_the_rest(tmp_path) -> None:  # noqa: ANN001
    from pipeline.errors import ConfigError
    from pipeline.settings import read_profile

    ok = tmp_path / "shop.env"
    ok.write_text('# a profile\nRERANK_ALS_FACTORS=24\nRERANK_RECALL_PRIORS={"als": 0.9}\n\n'
                  'RERANK_DECAY_FROM=user_last\n')
    assert read_profile(ok) == {"als_factors": "24", "recall_priors": {"als": 0.9}, "decay_from": "user_last"}
    for text, word in (("RERANK_ALS_FACTRS=24\n", "ALS_FACTRS"), ("RERANK_DECAY_FROM=yesterday\n", "DECAY_FROM"),
                       ("RERANK_RECALL_PRIORS={als}\n", "RECALL_PRIORS")):
        bad = tmp_path / "bad.env"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=word):
            read_profile(bad)


def test_the_checked_in_profiles_are_valid() -> None:
    from pathlib import Path

    from pipeline.settings import read_profile

    profiles = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.env"))
    assert profiles
    for p in profiles:
        assert read_profile(p)
