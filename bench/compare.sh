#!/usr/bin/env bash
# Benchmark (not a test): Tessera and Orthanc (with its DICOMweb plugin) side by side, in one
# run, on the same data and with the same client (../shared/bench, ../shared/peer), and the
# migration copy / delete-old next to `cp -r` and `cp -al` of the same tree, and QIDO on an index of
# 1,000,000 instances (bench/qido.sh). Writes BENCHMARKS.md.
#
# Usage: bash bench/compare.sh [--quick]
#   --quick: a smaller small dataset (400 instances), no large dataset, no migration timing.
# Installs what it needs: Orthanc from Debian's packages (as ../shared/peer/README.md says),
# pydicom and numpy into .tools/benchvenv (for the dataset generator).
# Run it when nothing has deleted many files on this filesystem in the last ~6 minutes (another
# run of this script, a test suite, a removed build): ext4 without a journal skips recently freed
# inodes one by one when it creates a file, and on this machine that made the STOW phases of a
# run started right after another run's cleanup up to 40% slower. For the same reason, a run that
# follows one that deleted files (Orthanc's DELETE phase, its reset of its storage) starts only once
# those deletions are on disk and older than the kernel's window (`settle`, about a minute each).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=$root/../shared
quick=0
[ "${1:-}" = "--quick" ] && quick=1

work=$(mktemp -d -t tessera-compare.XXXXXX)
tessera_pid=""
cleanup() {
  if [ -n "$tessera_pid" ]; then kill "$tessera_pid" 2>/dev/null || true; wait "$tessera_pid" 2>/dev/null || true; fi
  "$shared/peer/orthanc.sh" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building release"
cargo build --release -q -p tessera-server -p tessera-ops --bins --examples

if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  echo "== installing Orthanc from Debian's packages"
  apt-get update -qq
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null
fi
if [ ! -x .tools/benchvenv/bin/python ] || ! .tools/benchvenv/bin/python -c 'import pydicom, numpy' 2>/dev/null; then
  echo "== installing pydicom and numpy from PyPI"
  python3 -m venv .tools/benchvenv
  .tools/benchvenv/bin/pip install --quiet --disable-pip-version-check pydicom numpy
fi

small=$work/dwb-small
large=$work/dwb-large
echo "== generating datasets"
if [ "$quick" = 1 ]; then
  .tools/benchvenv/bin/python "$shared/bench/gen_dataset.py" --out "$small" --studies 20 --series 2 --instances 10 --rows 256 --cols 256 --seed 42 >/dev/null
else
  .tools/benchvenv/bin/python "$shared/bench/gen_dataset.py" --out "$small" --studies 100 --series 2 --instances 10 --rows 256 --cols 256 --seed 42 >/dev/null
  .tools/benchvenv/bin/python "$shared/bench/gen_dataset.py" --out "$large" --studies 0 --large 4 --large-mb 100 --seed 43 >/dev/null
fi

# The datasets (about 700 MB) go to disk now, not while the first runs are measured.
sync

bench=$shared/bench/dicomweb_bench.py
results=$work/results
mkdir -p "$results"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether files were deleted since the last `settle` (none yet: the datasets were only created).
deleted=0

# ext4 without a journal does not hand out an inode freed in the last minute (longer while its
# inode table block is not written back) while it can skip it, and it skips such inodes one by one
# on every file it creates. After a run that deleted thousands of files, the next run's first minute of file
# creation paid that (STOW CPU per object up to twice as high here), whichever server it measured.
# So the deletions are written back and left to age past the window before the next run starts.
settle() {
  if [ "$deleted" = 1 ]; then
    sync
    sleep 65
    deleted=0
  fi
}

# One run against a fresh Tessera (embedded defaults: SQLite and local files in a new directory).
run_tessera() { # name, then bench args
  local name=$1; shift
  settle
  local dir=$work/tessera-$name port
  mkdir -p "$dir"
  port=$(free_port)
  # As deployed: without a developer's RUST_BACKTRACE, under which every error value dicom-rs
  # makes while it reads a header captures a backtrace.
  (cd "$dir" && exec env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$root/target/release/tessera" serve \
    --listen "127.0.0.1:$port" >"$dir/server.log" 2>&1) &
  tessera_pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/health/check" && break; sleep 0.1; done
  echo "   tessera $name"
  python3 "$bench" --base "http://127.0.0.1:$port/v2" --pid "$tessera_pid" --server-storage "$dir" \
    --label "tessera $name" --out "$results/tessera.$name.jsonl" "$@" >/dev/null
  kill "$tessera_pid"; wait "$tessera_pid" 2>/dev/null || true; tessera_pid=""
  # Its DELETE phase removes no file: deleted instances' blobs go after DeleteDelay (3 days).
  # Kept until the end: on ext4 without a journal, files deleted in the last minutes slow down
  # every file the next run creates (the inode allocator skips recently freed inodes).
}

# One run against a fresh Orthanc (../shared/peer/orthanc.sh: its own network namespace).
run_orthanc() { # name, then bench args
  local name=$1; shift
  "$shared/peer/orthanc.sh" reset >/dev/null
  settle
  local pid; pid=$("$shared/peer/orthanc.sh" pid)
  echo "   orthanc $name"
  "$shared/peer/orthanc.sh" exec python3 "$bench" --base http://127.0.0.1:8042/dicom-web --pid "$pid" \
    --server-storage /tmp/orthanc-bench/db --label "orthanc $name" --out "$results/orthanc.$name.jsonl" "$@" >/dev/null
  # Its DELETE phase, or else the next reset, removes the small dataset's files.
  case " $* " in *dwb-small*) deleted=1 ;; esac
}

runs=()
for c in 1 8; do
  runs+=("small-single-c$c|--data $small -c $c --stow-mode single --phases stow,qido,wado,delete")
  runs+=("small-batch20-c$c|--data $small -c $c --stow-mode batch --batch-size 20 --phases stow")
done
if [ "$quick" = 0 ]; then
  for c in 1 8; do
    runs+=("large-c$c|--data $large -c $c --stow-mode single --phases stow,wado,delete --wado-repeats 2")
  done
fi

for server in tessera orthanc; do
  echo "== $server"
  for run in "${runs[@]}"; do
    name=${run%%|*}
    # shellcheck disable=SC2086
    "run_$server" "$name" ${run#*|}
  done
done
"$shared/peer/orthanc.sh" stop >/dev/null

migration=""
if [ "$quick" = 0 ]; then
  echo "== migration copy / delete-old of 20,000 instances of 16 KiB, and cp -r / cp -al"
  settle
  migration=$("$root/target/release/examples/migration_bench" 20000 16 2>&1)
fi

qido_1m=""
if [ "$quick" = 0 ]; then
  echo "== QIDO on an index of 1,000,000 instances"
  qido_1m=$(bash bench/qido.sh 1000000 2>&1)
fi

echo "== writing BENCHMARKS.md"
python3 bench/compare_table.py --results "$results" --command "bash bench/compare.sh $*" \
  --migration "$migration" --qido-1m "$qido_1m" >BENCHMARKS.md
echo "wrote BENCHMARKS.md"
