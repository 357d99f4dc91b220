#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a developer's: installs and starts the services the
# tests talk to (Azurite for the Azure backend), checks formatting and lints, runs every test,
# and stops only what it started. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

AZURITE_VERSION=3.35.0   # the last release that runs on Node 20
workdir=$(mktemp -d -t tessera-test.XXXXXX)
started=()
cleanup() {
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
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
  --skipApiVersionCheck --loose --silent >"$workdir/azurite.log" 2>&1 &
started+=($!)
wait_for_http "http://127.0.0.1:$azurite_port/devstoreaccount1?comp=list" Azurite "$workdir/azurite.log"
echo "== Azurite on 127.0.0.1:$azurite_port"

# Python's dicomweb-client for the interoperability test, in a virtual environment under .tools/.
if [ ! -x .tools/venv/bin/python ] || ! .tools/venv/bin/python -c 'import dicomweb_client' 2>/dev/null; then
  echo "== installing dicomweb-client from PyPI"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check dicomweb-client
fi
export TESSERA_TEST_PYTHON="$PWD/.tools/venv/bin/python"

export TESSERA_TEST_AZURE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$azurite_port/devstoreaccount1"
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
