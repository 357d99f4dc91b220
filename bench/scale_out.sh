#!/usr/bin/env bash
# Benchmark (not a test): STOW throughput at c=8 on PostgreSQL, one `tessera serve` process
# against two on the same database and the same blob folder (each of two clients sends half the
# instances, 4 at a time, to its own process).
# Usage: bash bench/scale_out.sh POSTGRES_URL   (a role that may create databases)
# Needs the small dataset tools of ../shared/bench (bench/compare.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=$root/../shared
admin_url=${1:?usage: bash bench/scale_out.sh POSTGRES_URL}
python=.tools/benchvenv/bin/python
cargo build --release -q -p tessera-server
work=$(mktemp -d -t tessera-scale.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Two halves of 1,000 instances each, with distinct UIDs (different seeds).
"$python" "$shared/bench/gen_dataset.py" --out "$work/a" --studies 50 --series 2 --instances 10 --rows 256 --cols 256 --seed 51 >/dev/null
"$python" "$shared/bench/gen_dataset.py" --out "$work/b" --studies 50 --series 2 --instances 10 --rows 256 --cols 256 --seed 52 >/dev/null

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
database_url() { # a fresh database on the server of $admin_url
  local name=tessera_scale_$RANDOM$RANDOM
  psql -q "$admin_url" -c "CREATE DATABASE $name" >/dev/null
  echo "${admin_url%/*}/$name"
}
start() { # index url, blob dir; sets $port and adds the server to $pids
  port=$(free_port)
  Tessera__Index=$1 Tessera__BlobStore=file://$2 \
    "$root/target/release/tessera" serve --listen "127.0.0.1:$port" >>"$work/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/health/check" && break; sleep 0.1; done
}
stow() { # port, dataset, concurrency -> objects/s
  python3 "$shared/bench/dicomweb_bench.py" --base "http://127.0.0.1:$1/v2" --data "$2" -c "$3" \
    --stow-mode single --phases stow | python3 -c 'import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("phase") == "stow_single":
        print(j["objects_per_s"], j["errors"])'
}

echo "== one process, c=8, 1,000 instances"
start "$(database_url)" "$work/blobs-one"
read -r one errors < <(stow "$port" "$work/a" 8)
echo "one process:   $one instances/s ($errors errors)"
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()

echo "== two processes on one database and one blob folder, c=4 each, 1,000 instances each"
url=$(database_url)
start "$url" "$work/blobs-two"
port_a=$port
start "$url" "$work/blobs-two"
port_b=$port
started=$(date +%s.%N)
stow "$port_a" "$work/a" 4 >"$work/a.out" &
client_a=$!
stow "$port_b" "$work/b" 4 >"$work/b.out" &
client_b=$!
wait "$client_a" "$client_b"
seconds=$(python3 -c "import time; print(time.time() - $started)")
read -r a errors_a <"$work/a.out"
read -r b errors_b <"$work/b.out"
echo "two processes: $(python3 -c "print(round(2000 / $seconds, 1))") instances/s in all ($a + $b per client; $errors_a + $errors_b errors)"
