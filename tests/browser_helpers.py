"""Headless Chromium for the browser tests: where Debian's chromium and chromedriver are, the marks
that skip a test (with the install command) when they or selenium are missing, and a driver on a
fresh profile, so no view setting kept from an earlier visit changes what a page shows."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest


def _exe(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)


CHROMIUM, CHROMEDRIVER = _exe("chromium"), _exe("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:  # the skip below says why
    webdriver = None
INSTALL = "install with: bash .ci/browser-deps.sh"
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason=f"Debian chromium not found (/usr/bin/chromium); {INSTALL}"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason=f"chromedriver not found (Debian chromium-driver); {INSTALL}"),
    pytest.mark.skipif(webdriver is None, reason=f"selenium is not importable; {INSTALL}"),
]
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1600,1000")


@contextlib.contextmanager
def fresh_chromium(page_load_timeout_s: float) -> Iterator[Any]:
    """A Chrome driver on a new, empty profile, removed afterwards."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(page_load_timeout_s)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
