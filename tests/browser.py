"""Headless Chromium (Debian's ``chromium``) for tests: a page's rendered DOM and a screenshot of it.

Screenshots go to ``tests/artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1100",
    "--virtual-time-budget=8000",
)


def need_chromium() -> None:
    """Skip without Chromium, except under CI, where its absence is a failure."""
    if not Path(CHROMIUM).exists():
        message = "chromium is not installed: deploy/bootstrap.sh installs it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran."""
    return _chromium(url, "--dump-dom").stdout


def screenshot(url: str, name: str) -> Path:
    """Save a PNG of the page as ``tests/artifacts/<name>.png`` and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.unlink(missing_ok=True)
    _chromium(url, f"--screenshot={path}")
    assert path.stat().st_size > 10_000, "the screenshot is blank"
    print(f"screenshot: {path}")
    return path
