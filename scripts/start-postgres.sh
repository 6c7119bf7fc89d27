#!/usr/bin/env bash
# Starts the machine's PostgreSQL 15 cluster if it is not running, gives the
# `postgres` role a known password for TCP logins, and prints the URL the
# tests use (KEYGATE_TEST_POSTGRES_URL). Idempotent; needs root on a Debian
# machine with postgresql installed (as CI and the dev machines are).
set -euo pipefail

password="${KEYGATE_PG_PASSWORD:-keygate}"
host=127.0.0.1
port=5432

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "start-postgres: pg_ctlcluster not found; install postgresql or set KEYGATE_TEST_POSTGRES_URL" >&2
  exit 1
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_isready -q -h "$host" -p "$port"; then
  pg_ctlcluster "$version" main start >&2 || true
fi
for _ in $(seq 1 60); do
  pg_isready -q -h "$host" -p "$port" && break
  sleep 0.5
done
pg_isready -q -h "$host" -p "$port" || { echo "start-postgres: server did not come up" >&2; exit 1; }
# Peer auth on the socket as the postgres OS user; no PG* variables may point psql at TCP.
env -u PGHOST -u PGPORT -u PGUSER -u PGPASSWORD -u PGDATABASE \
  su postgres -c "psql -q -v ON_ERROR_STOP=1 -c \"alter user postgres password '$password'\"" >&2
echo "postgres://postgres:${password}@${host}:${port}/postgres"
