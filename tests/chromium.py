"""Headless Chromium for the tests that open the HTML pages: found on PATH (``chromium``, ``chromium-browser``,
``google-chrome``) or at ``RERANK_TEST_CHROMIUM``; ``make setup`` installs Debian's ``chromium`` when it is
missing and apt can (as root). Tests skip with the reason when none is found."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Appended to a copy of the page: once loaded, the body says how many images decoded.
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-images-ok', "
         "String([...document.images].filter(i => i.complete && i.naturalWidth > 0).length)));</script>")


def chromium() -> str:
    """The browser's path, or a skip naming what was looked for."""
    given = os.environ.get("RERANK_TEST_CHROMIUM")
    if given:
        return given
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless Chromium found ({', '.join(NAMES)} on PATH, or RERANK_TEST_CHROMIUM); "
                "`make setup` installs it with apt when run as root, or: apt-get install -y chromium")


def rendered_dom(page: Path, tmp: Path) -> str:
    """The DOM of ``page`` after Chromium loaded it (scripts run, images decoded)."""
    probe = tmp / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           f"--user-data-dir={tmp / 'chromium-profile'}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
