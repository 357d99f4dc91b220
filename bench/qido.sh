#!/usr/bin/env bash
# Benchmark (not a test): QIDO latency (p50/p95 per query kind) on an embedded index of
# INSTANCES instances (default 100,000). Usage: bash bench/qido.sh [INSTANCES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p tessera-index --example qido_bench -- "${1:-100000}"
