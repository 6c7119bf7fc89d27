#!/usr/bin/env bash
# Installs nginx (Debian's package, with the auth_request module) when it is
# missing, for tests/nginx.rs. Idempotent; needs root and apt-get, as CI and
# the dev machines have. Installing does not need nginx to run: the test
# starts its own, in the foreground, on a free port.
set -euo pipefail

for bin in /usr/sbin/nginx /usr/local/sbin/nginx /usr/bin/nginx; do
  [[ -x "$bin" ]] && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-nginx: no apt-get; install nginx by hand for tests/nginx.rs" >&2
  exit 1
fi
echo "install-nginx: installing nginx" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# The package's own service is not wanted: keep apt from starting it.
made_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
apt-get install -y -qq --no-install-recommends nginx >&2
[[ $made_policy -eq 0 ]] || rm -f /usr/sbin/policy-rc.d
