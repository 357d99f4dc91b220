#!/usr/bin/env bash
# Benchmark (not a test): adoption of INSTANCES Old-name instances (default 20,000) on the
# filesystem store; prints instances per second and peak RSS. Usage: bash bench/adopt.sh [INSTANCES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p tessera-ops --example adopt_bench -- "${1:-20000}"
