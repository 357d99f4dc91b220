#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a developer's: installs and starts the services the
# tests talk to (Azurite for the Azure backend, moto's S3 server for the S3 backend, PostgreSQL
# for the index), checks formatting and lints, runs every test, and stops only what it started.
# CI runs exactly this (.ci/run).
#
# PostgreSQL: TESSERA_TEST_POSTGRES_URL (a role that may create databases, on its maintenance
# database) is used when set; otherwise a server already listening on 127.0.0.1:5432 is used as
# postgres://postgres@127.0.0.1:5432/postgres; otherwise PostgreSQL is installed from Debian's
# packages if needed and a private cluster is started on a free port (and stopped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

AZURITE_VERSION=3.35.0   # the last release that runs on Node 20
MOTO_VERSION=5.2.5
workdir=$(mktemp -d -t tessera-test.XXXXXX)
started=()
pg_started=""
cleanup() {
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_started" ]; then
    as_pg_user "$pg_bin/pg_ctl" -D "$pg_started" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_http() { # url, name, log
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.2
  done
  echo "error: $2 did not start; its log:" >&2
  cat "$3" >&2
  exit 1
}

# Azurite: an installed `azurite-blob` is used as it is; otherwise it is installed from npm into
# .tools/ (kept between runs). Our own instance on a free port, so a running one is left alone.
azurite_bin=$(command -v azurite-blob || true)
if [ -z "$azurite_bin" ]; then
  azurite_bin=.tools/azurite/node_modules/.bin/azurite-blob
  if [ ! -x "$azurite_bin" ]; then
    echo "== installing azurite@$AZURITE_VERSION from npm"
    npm install --silent --no-audit --no-fund --prefix .tools/azurite "azurite@$AZURITE_VERSION"
  fi
fi
azurite_port=$(free_port)
"$azurite_bin" --blobHost 127.0.0.1 --blobPort "$azurite_port" --location "$workdir/azurite" \
  --skipApiVersionCheck --loose --silent --disableTelemetry >"$workdir/azurite.log" 2>&1 &
started+=($!)
wait_for_http "http://127.0.0.1:$azurite_port/devstoreaccount1?comp=list" Azurite "$workdir/azurite.log"
echo "== Azurite on 127.0.0.1:$azurite_port"

# PostgreSQL for the index suites (see the top of this file).
as_pg_user() { # postgres refuses to run as root: as root, run it as the `postgres` user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ -z "${TESSERA_TEST_POSTGRES_URL:-}" ]; then
  if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    export TESSERA_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
    echo "== PostgreSQL already listening on 127.0.0.1:5432"
  else
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
      echo "== installing postgresql from Debian's packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
      useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres
    fi
    pg_dir="$workdir/postgres"
    mkdir -p "$pg_dir"
    chmod 755 "$workdir"
    [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
    as_pg_user "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust >"$workdir/initdb.log" 2>&1 \
      || { cat "$workdir/initdb.log" >&2; exit 1; }
    pg_port=$(free_port)
    as_pg_user "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 60 start \
      -o "-h 127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=200" >/dev/null \
      || { cat "$pg_dir/log" >&2; exit 1; }
    pg_started="$pg_dir/data"
    export TESSERA_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
    echo "== PostgreSQL on 127.0.0.1:$pg_port"
  fi
fi

# moto's S3 server, from PyPI into a virtual environment under .tools/ (kept between runs), on a
# free port. It enforces `If-None-Match: *` on PutObject and CompleteMultipartUpload, which
# Tessera's create-only puts and copies rely on. The conformance suite lowers the multipart part
# size to 64 KiB to exercise the staged path with small bodies, so moto's minimum part size
# (5 MiB, as on AWS) is lowered to match; Tessera's own part size (8 MiB) is above AWS's minimum.
# Only S3's dependencies and the server's (Flask): `moto[server]` would bring every AWS service's.
if [ ! -x .tools/moto/bin/moto_server ]; then
  echo "== installing moto[s3]==$MOTO_VERSION and its server from PyPI"
  python3 -m venv .tools/moto
  .tools/moto/bin/pip install --quiet --disable-pip-version-check "moto[s3]==$MOTO_VERSION" flask flask-cors
fi
moto_port=$(free_port)
S3_UPLOAD_PART_MIN_SIZE=65536 .tools/moto/bin/moto_server -H 127.0.0.1 -p "$moto_port" \
  >"$workdir/moto.log" 2>&1 &
started+=($!)
wait_for_http "http://127.0.0.1:$moto_port/" moto "$workdir/moto.log"
curl -sf -X PUT "http://127.0.0.1:$moto_port/tessera-test" >/dev/null
echo "== moto (S3) on 127.0.0.1:$moto_port"

# Python's dicomweb-client for the interoperability test and schemathesis for the property-based
# API test (crates/server/tests/openapi.rs), in a virtual environment under .tools/.
SCHEMATHESIS_VERSION=4.32.5
if [ ! -x .tools/venv/bin/python ] || ! .tools/venv/bin/python -c 'import dicomweb_client' 2>/dev/null \
  || [ "$(.tools/venv/bin/st --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
  echo "== installing dicomweb-client and schemathesis@$SCHEMATHESIS_VERSION from PyPI"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check dicomweb-client \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi
export TESSERA_TEST_PYTHON="$PWD/.tools/venv/bin/python"

export TESSERA_TEST_AZURE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$azurite_port/devstoreaccount1"
# object_store reads the S3 endpoint and credentials from these; tests give each case its own
# key prefix in the bucket.
export AWS_ENDPOINT="http://127.0.0.1:$moto_port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=tessera-test AWS_SECRET_ACCESS_KEY=tessera-test
export TESSERA_TEST_S3_BUCKET=tessera-test
export TESSERA_TEST_REQUIRE_SERVICES=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# OHIF, the web viewer, against a real Tessera in headless Chromium (≤ 3 min; installs OHIF and
# playwright-core from npm into .tools/ohif, and Debian's chromium when missing). It runs before
# the Rust tests so that their summary closes the run.
echo "== OHIF end to end"
cargo build --locked -q -p tessera-server --bin tessera
timeout 180 bash e2e/ohif/run.sh target/debug/tessera
echo "== cargo test"
cargo test --workspace --locked "$@"
echo "== end-to-end DICOMweb, migration and adoption suites on PostgreSQL"
TESSERA_TEST_SERVER_INDEX=postgres cargo test --locked -p tessera-server --test dicomweb --test migration --test adopt "$@"
