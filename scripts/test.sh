#!/usr/bin/env bash
# The whole test suite: fetches the two small real models once (into .cache/models), then runs
# every unit, integration and end-to-end test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh >/dev/null
cargo test --workspace --locked "$@"
