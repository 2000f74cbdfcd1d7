#!/usr/bin/env bash
# The whole test suite: fetches the small real models once (two encoders, Whisper tiny.en and base,
# three GGUF language models, into .cache/models), speech samples (.cache/media) and a
# PostgreSQL server with pgvector (.cache/postgres), then runs
# every unit, integration and end-to-end test of the workspace, and prints one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh >/dev/null
./scripts/fetch-media.sh >/dev/null
./scripts/fetch-llms.sh >/dev/null
./scripts/fetch-postgres.sh >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed"
exit "$status"
