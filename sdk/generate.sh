#!/usr/bin/env bash
# Regenerates the SDKs' code from proto/ with buf (buf.gen.yaml at the root):
#   sdk/go/keygate/v1/*.pb.go                Go messages and gRPC clients/servers
#   sdk/python/src/keygate/v1/*_pb2*.py{,i}  Python messages, gRPC stubs and typed stubs
# Installs the pinned tools first (tools/install.sh). Idempotent: running it on
# an up-to-date tree changes nothing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tools/install.sh

# buf only writes files; remove the previous output so that a message or file
# deleted from proto/ does not leave stale generated code behind.
rm -f sdk/go/keygate/v1/*.pb.go sdk/python/src/keygate/v1/*_pb2*.py sdk/python/src/keygate/v1/*_pb2*.pyi

tools/node_modules/.bin/buf generate
echo "generated sdk/go/keygate/v1 and sdk/python/src/keygate/v1 from proto/" >&2
