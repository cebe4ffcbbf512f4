#!/usr/bin/env bash
# Install (a no-op when present) and start PostgreSQL on loopback for the multi-worker storage
# tests; prints the URL the tests read from LORA_SWEEP_PG_URL.
set -euo pipefail
exec 3>&1 1>&2  # only the URL goes to stdout (the caller captures it); everything else to stderr
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || true
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q online; then
  pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
  pg_ctlcluster "$version" main start 3>&-  # the server must not hold the caller's pipe open
fi
for _ in $(seq 30); do su postgres -c "pg_isready -q -h 127.0.0.1" && break; sleep 1; done
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='lora_sweep_test'\"" | grep -q 1 \
  || su postgres -c "createdb lora_sweep_test"
echo "postgresql://postgres:postgres@127.0.0.1:5432/lora_sweep_test" >&3
