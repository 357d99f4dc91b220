#!/usr/bin/env bash
# Benchmark (not a test): copy and delete-old throughput for INSTANCES instances (default 20,000)
# of KIB KiB (default 16) on the filesystem store. Usage: bash bench/migration.sh [INSTANCES] [KIB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p tessera-ops --example migration_bench -- "${1:-20000}" "${2:-16}"
