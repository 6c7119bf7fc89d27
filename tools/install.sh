#!/usr/bin/env bash
# Installs the pinned code-generation tools into tools/ (idempotent):
#   tools/node_modules/.bin/buf        buf, from tools/package-lock.json (npm)
#   tools/bin/protoc-gen-go{,-grpc}    from the tool directives of tools/go.mod
#   tools/.venv                        grpcio-tools and mypy-protobuf, from tools/requirements.txt
# Needs Go, Node.js with npm, and Python 3.11+ with venv. Re-running it only
# reinstalls what is missing or out of date.
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$tools"

buf_version="$(node -p 'require("./package.json").devDependencies["@bufbuild/buf"]')"
if [[ "$(node_modules/.bin/buf --version 2>/dev/null || true)" != "$buf_version" ]]; then
  echo "tools: installing buf $buf_version" >&2
  # Not `npm ci`: buf's lock lists only this platform's optional binary
  # package, which npm ci rejects as out of sync; install resolves the same
  # pinned version from package.json and the lock.
  npm install --no-audit --no-fund --loglevel=error
fi

# go build is a no-op when the binaries are up to date with go.mod/go.sum.
go build -o bin/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

python="${PYTHON:-python3}"
stamp=.venv/requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
  echo "tools: installing Python generators from requirements.txt" >&2
  rm -rf .venv
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
