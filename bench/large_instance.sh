#!/usr/bin/env bash
# Benchmark (not a test): stores and retrieves one large synthetic instance (default 1 GiB)
# through a release build of `tessera serve` on the embedded defaults, and prints throughput
# and the server's peak RSS (VmHWM). Usage: bash bench/large_instance.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release -q -p tessera-server -p tessera-testkit --examples --bins
work=$(mktemp -d -t tessera-bench.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

./target/release/examples/synthetic_dicom "$work/large.dcm" "$size_mib"
bytes=$(stat -c %s "$work/large.dcm")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$work" && exec "$OLDPWD/target/release/tessera" serve --listen "127.0.0.1:$port" >"$work/server.log" 2>&1) &
server_pid=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/health/check" && break; sleep 0.1; done

store=$(curl -s -o "$work/stow.json" -w '%{http_code} %{time_total}' -X POST \
  -H 'Content-Type: application/dicom' -H 'Accept: application/dicom+json' \
  -T "$work/large.dcm" "http://127.0.0.1:$port/v2/studies")
url="http://127.0.0.1:$port/v2/studies/1.2.826.0.1.3680043.10.9/series/1.2.826.0.1.3680043.10.9.1/instances/1.2.826.0.1.3680043.10.9.1.1"
retrieve=$(curl -s -o "$work/back.dcm" -w '%{http_code} %{time_total}' -H 'Accept: application/dicom' "$url")
same=$(cmp -s "$work/large.dcm" "$work/back.dcm" && echo yes || echo NO)
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")

read -r store_code store_s <<<"$store"
read -r get_code get_s <<<"$retrieve"
mib=$(python3 -c "print(round($bytes / 1048576, 1))")
echo "instance: $mib MiB"
echo "store:    HTTP $store_code in ${store_s}s ($(python3 -c "print(round($bytes / 1048576 / $store_s, 1))") MiB/s)"
echo "retrieve: HTTP $get_code in ${get_s}s ($(python3 -c "print(round($bytes / 1048576 / $get_s, 1))") MiB/s), byte-identical: $same"
echo "server peak RSS (VmHWM): $((hwm_kb / 1024)) MiB"
