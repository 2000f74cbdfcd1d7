#!/usr/bin/env bash
# Load test: `zhiku serve` against the Python server users would run instead (FastAPI + uvicorn +
# transformers, bench/py_server.py), same classifier folder, same machine, same run, driven by
# wrk (Debian package) at concurrency 1, 8 and 64 with single short texts and batches of 32.
# Writes bench/results/load.json and prints the table with zhiku / Python ratios.
#   MODEL=runs/quality-bbc PYTHON=/path/to/python bench/load.sh      (DURATION=10 seconds per cell)
# The model is any classifier folder written by `zhiku train` (bench/quality.sh bbc makes one).
# ZHIKU_SERVE_FLAGS adds flags to zhiku serve. INT8=1 also runs zhiku with the int8 encoder
# (--int8) in the same session, as a third server in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
MODEL="${MODEL:-runs/quality-bbc}"
DURATION="${DURATION:-10}"
ZPORT=8090 PPORT=8091
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
[ -f "$MODEL/config.json" ] || { echo "no classifier at $MODEL (run bench/quality.sh bbc, or set MODEL)" >&2; exit 1; }
cargo build --release --locked -q
mkdir -p bench/results
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT

short="The striker scored twice in the second half as United won the cup final."
python3 - "$tmp" "$short" <<'PY'
import json, sys
d, short = sys.argv[1], sys.argv[2]
json.dump({"texts": [short]}, open(f"{d}/single.json", "w"))
texts = [f"{short} Report number {i} on the markets, the election and a new phone." for i in range(32)]
json.dump({"texts": texts}, open(f"{d}/batch32.json", "w"))
PY

wait_up() { for _ in $(seq 1 120); do curl -sf "localhost:$1/health" >/dev/null && return 0; sleep 0.5; done; echo "server on $1 did not start" >&2; exit 1; }

run_server() { # name port
  local name=$1 port=$2
  for payload in single batch32; do
    for c in 1 8 64; do
      # Batches of 32 at concurrency 64 queue 2048 texts: run them 3x longer so rounds complete.
      local secs=$DURATION line
      [ "$payload" = batch32 ] && secs=$(( 3 * DURATION ))
      BODY_FILE="$tmp/$payload.json" wrk -t "$(( c < 2 ? 1 : 2 ))" -c "$c" -d 2s --timeout 60s -s bench/wrk_post.lua "http://127.0.0.1:$port/v1/classify" >/dev/null  # warm-up
      line=$(BODY_FILE="$tmp/$payload.json" wrk -t "$(( c < 2 ? 1 : 2 ))" -c "$c" -d "${secs}s" --timeout 120s -s bench/wrk_post.lua "http://127.0.0.1:$port/v1/classify" | tail -1)
      echo "{\"server\": \"$name\", \"payload\": \"$payload\", \"concurrency\": $c, \"result\": $line}" | tee -a "$tmp/results.jsonl" >&2
    done
  done
}

variants="zhiku"; [ "${INT8:-0}" = 1 ] && variants="zhiku zhiku-int8"
for v in $variants; do
  flags=(); [ "$v" = zhiku-int8 ] && flags=(--int8 bench)
  target/release/zhiku serve --model bench="$MODEL" ${ZHIKU_SERVE_FLAGS:-} "${flags[@]}" --port $ZPORT 2>"$tmp/$v.log" &
  zpid=$!
  wait_up $ZPORT
  run_server "$v" $ZPORT
  kill -TERM $zpid; wait $zpid 2>/dev/null || true
done

"$PY" bench/py_server.py --model "$MODEL" --port $PPORT 2>"$tmp/py.log" &
ppid=$!
wait_up $PPORT
run_server python $PPORT
kill -TERM $ppid; wait $ppid 2>/dev/null || true

python3 - "$tmp/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump(rows, open("bench/results/load.json", "w"), indent=1)
by = {(r["server"], r["payload"], r["concurrency"]): r["result"] for r in rows}
for server in sorted({r["server"] for r in rows} - {"python"}):
    print(f"\n{'payload':<8} {'conc':>4} | {server + ' req/s':>16} {'p50':>7} {'p95':>7} {'p99':>7} {'err':>4} | {'python req/s':>12} {'p50':>7} {'p95':>7} {'p99':>7} {'err':>4} | {'thrpt x':>7} {'p99 x':>6}")
    for payload in ("single", "batch32"):
        for c in (1, 8, 64):
            z, p = by[(server, payload, c)], by[("python", payload, c)]
            print(f"{payload:<8} {c:>4} | {z['rps']:>16.1f} {z['p50_ms']:>7.1f} {z['p95_ms']:>7.1f} {z['p99_ms']:>7.1f} {z['errors']:>4} | "
                  f"{p['rps']:>12.1f} {p['p50_ms']:>7.1f} {p['p95_ms']:>7.1f} {p['p99_ms']:>7.1f} {p['errors']:>4} | "
                  f"{z['rps'] / max(p['rps'], 1e-9):>6.2f}x {p['p99_ms'] / max(z['p99_ms'], 1e-9):>5.2f}x")
print("latencies in ms; thrpt x = zhiku / python requests per second; p99 x = python p99 / zhiku p99 (above 1: zhiku faster)")
PY
