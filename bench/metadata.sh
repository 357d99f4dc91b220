#!/usr/bin/env bash
# Benchmark (not a test): series-metadata latency (p50/p95, plain and gzip) for a series of
# INSTANCES instances (default 1,000) on an embedded store. Usage: bash bench/metadata.sh [INSTANCES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tessera-server --bin tessera --example metadata_bench
target/release/examples/metadata_bench target/release/tessera "${1:-1000}"
