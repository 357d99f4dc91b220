#!/usr/bin/env bash
# Benchmark (not a test): QIDO latency (p50/p95 per query kind) on an index of INSTANCES
# instances (default 100,000): an embedded SQLite file, or with `--postgres URL` a database
# created for the run on that PostgreSQL server (URL: a role that may create databases, on its
# maintenance database, e.g. postgres://postgres@127.0.0.1:5432/postgres) and dropped after.
# Usage: bash bench/qido.sh [INSTANCES] [--postgres URL]
set -euo pipefail
cd "$(dirname "$0")/.."
instances=100000
postgres=""
while [ $# -gt 0 ]; do
  case "$1" in
    --postgres) postgres="$2"; shift 2 ;;
    *) instances="$1"; shift ;;
  esac
done
if [ -z "$postgres" ]; then
  cargo run --release -q -p tessera-index --example qido_bench -- "$instances"
  exit
fi
database="tessera_qido_bench_$$"
psql -q "$postgres" -c "CREATE DATABASE $database"
trap 'psql -q "$postgres" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"' EXIT
url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$postgres" "$database")
QIDO_BENCH_INDEX="$url" cargo run --release -q -p tessera-index --example qido_bench -- "$instances"
