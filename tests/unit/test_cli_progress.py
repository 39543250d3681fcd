"""Progress on long commands: drawn on stderr only when stderr is a terminal (scripts and CI see no change)."""

from __future__ import annotations

import io
import sys

import pytest

from pipeline.cli import _progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_terminal_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    with _progress("importing", total=3) as step:
        step("next")
        print("result line")
    captured = capsys.readouterr()
    assert captured.out == "result line\n" and captured.err == ""


def test_terminal_gets_a_progress_line(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _Tty()
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # piped stdout: left alone
    with _progress("nightly: validate", total=2) as step:
        step("nightly: extract")
        sys.stdout.write("stage line\n")
        step("nightly: extract done")
    assert "nightly: validate" in tty.getvalue()
    assert sys.stdout.getvalue() == "stage line\n"
