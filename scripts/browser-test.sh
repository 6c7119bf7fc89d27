#!/usr/bin/env bash
# The admin console's end-to-end browser test: installs Debian's chromium and
# chromium-driver when missing (root and apt-get, as CI and the dev machines
# have), makes a venv with tests/browser/requirements.txt and the project's
# Python SDK (sdk/python, to use the keys it creates through the Authorize
# RPC), and runs pytest against a real `keygate serve --http-listen …
# --console` (built here if KEYGATE_BIN is not set) in headless Chromium.
# Screenshots of every page go to KEYGATE_BROWSER_OUT (default
# target/browser-test/); the key list's is copied to docs/console-keys.png for
# the README when KEYGATE_UPDATE_DOCS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser-test: no apt-get; install chromium and chromium-driver by hand" >&2
    exit 1
  fi
  echo "browser-test: installing chromium and chromium-driver" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi

if [[ -z "${KEYGATE_BIN:-}" ]]; then
  cargo build -p keygate-server
  KEYGATE_BIN="$PWD/target/debug/keygate"
fi
export KEYGATE_BIN
export KEYGATE_BROWSER_OUT="${KEYGATE_BROWSER_OUT:-$PWD/target/browser-test}"
# Selenium must use the drivers above, never download its own.
export SE_OFFLINE=true

venv="${KEYGATE_BROWSER_VENV:-$PWD/target/browser-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./sdk/python
echo "browser-test: $(/usr/bin/chromium --version 2>/dev/null); $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)" >&2
"$venv/bin/python" -m pytest -p no:cacheprovider -q tests/browser
if [[ "${KEYGATE_UPDATE_DOCS:-0}" == 1 ]]; then
  cp "$KEYGATE_BROWSER_OUT/keys.png" docs/console-keys.png
fi
