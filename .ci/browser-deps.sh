#!/usr/bin/env bash
# Dependencies of tests/test_browser_dashboards.py (pytest -m browser): Debian's Chromium and its
# chromedriver, plus Selenium to drive them. Idempotent: installs only what is missing.
# Tools' own browser downloads (playwright install, Selenium Manager) are not used: they need
# hosts CI cannot reach, while Debian's packages come from the apt mirror.
set -euo pipefail

SELENIUM_VERSION="4.51.0"   # 4.52.0 needs certifi>=2026.10.23, newer than the index here offers

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists first when the packages are unknown (a fresh image has none), and
    # once more if the install fails on stale lists.
    if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
        $SUDO apt-get update -qq
    fi
    if ! $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; then
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
fi

PY="${PYTHON:-python}"
if ! "$PY" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
    "$PY" -m pip install -q --disable-pip-version-check "selenium==$SELENIUM_VERSION"
fi

/usr/bin/chromium --version
/usr/bin/chromedriver --version
"$PY" -c "import selenium; print('selenium', selenium.__version__)"
