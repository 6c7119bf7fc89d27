#!/usr/bin/env bash
# Checks the SDKs, as CI does:
#   1. buf lint, and buf breaking against the main branch when main already
#      has a commit containing proto/;
#   2. regenerates the SDK code and fails if that changed anything (the
#      generated code is committed and must match proto/; in CI's fresh clone
#      this compares with the commit);
#   3. the Go tests (go vet, go test) and the Python tests (mypy, pytest),
#      which start a real `keygate serve` ($KEYGATE_BIN, or target/debug/keygate,
#      built with cargo when missing).
# Needs Go, Node.js with npm, Python 3.11+ with venv and pip, and cargo.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
step() { printf '\n==> %s\n' "$*" >&2; }

step "installing pinned tools"
tools/install.sh
buf=tools/node_modules/.bin/buf

step "buf lint"
"$buf" lint

if git rev-parse --verify --quiet 'refs/heads/main^{commit}' >/dev/null \
  && [[ -n "$(git ls-tree -d main proto 2>/dev/null)" ]]; then
  step "buf breaking against main"
  "$buf" breaking --against '.git#branch=main'
else
  step "buf breaking skipped: branch main has no commit with proto/ yet"
fi

step "regenerating the SDK code"
generated=(sdk/go/keygate/v1 sdk/python/src/keygate/v1)
digest() { find "${generated[@]}" -type f ! -name '__init__.py' -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum; }
before="$(digest)"
sdk/generate.sh
after="$(digest)"
if [[ "$before" != "$after" ]]; then
  echo "error: regenerating changed the SDK code: it is out of date with proto/, buf.gen.yaml or tools/" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  echo "run sdk/generate.sh and commit the result (git diff shows the change)" >&2
  exit 1
fi

step "Go SDK: vet and test"
(
  cd sdk/go
  unformatted="$(gofmt -l .)"
  if [[ -n "$unformatted" ]]; then
    echo "error: not gofmt-formatted: $unformatted" >&2
    exit 1
  fi
  go vet ./...
  go test -count=1 ./...
)

step "Python SDK: install, mypy and pytest"
venv="${KEYGATE_SDK_VENV:-$root/sdk/python/.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade './sdk/python[test]'
(
  cd sdk/python
  "$venv/bin/python" -m mypy
  "$venv/bin/python" -m pytest -p no:cacheprovider
)
