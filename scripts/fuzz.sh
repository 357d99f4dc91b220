#!/usr/bin/env bash
# Fuzzes Tessera's input parsers (issue 10, item 8) with cargo-fuzz and libFuzzer on the stable
# toolchain (no sanitizer, so no nightly flags): each target runs for SECONDS (default 60) under
# `nice`, with a memory limit and a timeout per input. Exits non-zero when a target crashed,
# ran out of memory or timed out, and prints each such input (path and hex).
#
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="header qido" scripts/fuzz.sh 600   # only these targets
#   FUZZ_KEEP_GOING=1 scripts/fuzz.sh 600           # fork mode: collect every crash, don't stop
#
# Corpora grow in fuzz/corpus/<target> (kept between runs, not committed); they are seeded from
# fuzz/seeds/<target> (committed) and from the sample files in ../shared/testdata (built into
# fuzz/corpus/<target>-samples at each run). Crashing inputs land in fuzz/artifacts/<target>,
# logs in fuzz/logs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
targets=${FUZZ_TARGETS:-header fragments stow qido}
testdata=${TESSERA_FUZZ_TESTDATA:-../shared/testdata}
CARGO_FUZZ_VERSION=0.13.2
# Same flags for build and run, or cargo-fuzz rebuilds: no sanitizer (stable), with debug
# assertions and overflow checks.
fuzz_flags=(--sanitizer none --debug-assertions --release)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  nice -n 19 cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export TESSERA_FUZZ_TESTDATA="$(cd "$testdata" 2>/dev/null && pwd || echo "$testdata")"
mkdir -p fuzz/logs
# The SQLite files of the in-process servers (stow, qido), one per fuzzing process.
export TESSERA_FUZZ_INDEX_DIR
TESSERA_FUZZ_INDEX_DIR=$(mktemp -d -t tessera-fuzz-index.XXXXXX)
trap 'rm -rf "$TESSERA_FUZZ_INDEX_DIR"' EXIT

# Seeds from the sample files: the first bytes of each (its header and the start of its pixel
# data), each wrapped the way its target reads input.
samples() { # target → folder
  local dir="fuzz/corpus/$1-samples"
  rm -rf "$dir"
  mkdir -p "$dir"
  [ -d "$testdata" ] || { echo "$dir"; return; }
  local f name
  for f in "$testdata"/*.dcm "$testdata"/transfer-syntaxes/*.dcm; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .dcm)
    case $1 in
      header) { printf '\x07'; head -c 16384 "$f"; } >"$dir/$name" ;;
      fragments)
        # The item sequence after an undefined-length (7FE0,0010) OB, in explicit VR LE files.
        local at
        at=$(LC_ALL=C grep -obUaP '\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff' "$f" | head -1 | cut -d: -f1 || true)
        [ -n "$at" ] && { printf '\x00\x07\x01\x00'; tail -c +$((at + 13)) "$f" | head -c 8192; } >"$dir/$name"
        ;;
      stow)
        if [ "$(stat -c %s "$f")" -le 60000 ]; then
          { printf '\x00multipart/related; type="application/dicom"; boundary=tessera-fuzz\n'
            printf -- '--tessera-fuzz\r\nContent-Type: application/dicom\r\n\r\n'
            cat "$f"
            printf -- '\r\n--tessera-fuzz--\r\n'; } >"$dir/$name"
          { printf '\x05application/dicom\n'; cat "$f"; } >"$dir/$name-single"
        fi
        ;;
    esac
  done
  echo "$dir"
}

options() { # target → libFuzzer options beyond the common ones
  case $1 in
    header) echo "-max_len=131072 -timeout=10" ;;
    fragments) echo "-max_len=16384 -timeout=5" ;;
    stow) echo "-max_len=65536 -timeout=20" ;;
    qido) echo "-max_len=4096 -timeout=10" ;;
  esac
}

keep_going=()
if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
  keep_going=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
fi

echo "== building the fuzz targets"
nice -n 19 cargo fuzz build "${fuzz_flags[@]}"
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=0
for target in $targets; do
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/artifacts/$target"
  seeds=$(samples "$target")
  marker=$(mktemp)
  log="fuzz/logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
  echo "== fuzzing $target for ${seconds}s (log: $log)"
  # The binary itself, not `cargo fuzz run`, which after a crash replays every failing input.
  # shellcheck disable=SC2046
  nice -n 19 "$bin_dir/$target" -artifact_prefix="fuzz/artifacts/$target/" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 \
    $(options "$target") "${keep_going[@]}" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" "$seeds" >"$log" 2>&1 || true
  grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -1 || true
  grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$log" || true
  found=$(find "fuzz/artifacts/$target" -type f -newer "$marker" | wc -l)
  if [ "$found" -gt 0 ]; then
    failed=1
    echo "!! $target: $found crashing, out-of-memory or timed-out inputs in fuzz/artifacts/$target; the smallest:"
    # Each is run again to say why it fails (fork mode keeps the children's output apart).
    find "fuzz/artifacts/$target" -type f -newer "$marker" -printf '%s %p\n' | sort -n | head -5 | while read -r size f; do
      why=$(timeout 60 "$bin_dir/$target" "$f" 2>&1 |
        grep -m1 -A1 -E 'panicked at|==tessera-fuzz==|ERROR: libFuzzer' | tr '\n' ' ' | cut -c1-300 || true)
      echo "-- $f ($size bytes): $why"
      od -A x -t x1z -N 384 "$f"
    done
  fi
  rm -f "$marker"
done
exit "$failed"
