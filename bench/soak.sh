#!/usr/bin/env bash
# Soak: `zhiku serve` under 5 minutes of mixed load (single-text classification at concurrency 8,
# batches of 32 embeddings at concurrency 4, OpenAI embeddings at concurrency 2, all at once, by
# wrk), sampling the server's resident memory every 5 s. Writes bench/results/soak.json and prints
# the memory after warm-up, at the end and at its peak, and the error counts.
#   MODEL=runs/quality-bbc bench/soak.sh          (SECONDS_TOTAL=300)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-runs/quality-bbc}"
ENCODER="${ENCODER:-.cache/models/all-MiniLM-L6-v2}"
TOTAL="${SECONDS_TOTAL:-300}"
PORT=8093
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked -q
mkdir -p bench/results
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
python3 - "$tmp" <<'PY'
import json, sys
d = sys.argv[1]
json.dump({"model": "cls", "texts": ["Shares in the carmaker jumped after profits beat forecasts."]}, open(f"{d}/classify.json", "w"))
json.dump({"model": "enc", "texts": [f"Lecture {i}: an introduction to linear algebra and its uses in search." for i in range(32)]}, open(f"{d}/embed.json", "w"))
json.dump({"model": "enc", "input": ["How do I reset my password?", "I forgot my login details."]}, open(f"{d}/openai.json", "w"))
PY
target/release/zhiku serve --model cls="$MODEL" --model enc="$ENCODER" --port $PORT 2>"$tmp/server.log" &
pid=$!
for _ in $(seq 1 120); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.5; done
load() { BODY_FILE="$tmp/$1.json" wrk -t 1 -c "$2" -d "${TOTAL}s" --timeout 60s -s bench/wrk_post.lua "http://127.0.0.1:$PORT$3" | tail -1 > "$tmp/$1.out"; }
load classify 8 /v1/classify &
load embed 4 /v1/embed &
load openai 2 /v1/embeddings &
: > "$tmp/rss"
for t in $(seq 0 5 "$TOTAL"); do
  echo "$t $(awk '/VmRSS/ {print $2}' /proc/$pid/status)" >> "$tmp/rss"
  sleep 5
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
curl -s "localhost:$PORT/metrics" | grep -E '^zhiku_(requests|errors)_total' > "$tmp/metrics" || true
python3 - "$tmp" "$TOTAL" <<'PY'
import json, sys
d, total = sys.argv[1], int(sys.argv[2])
rss = [tuple(map(int, l.split())) for l in open(f"{d}/rss") if len(l.split()) == 2]
loads = {name: json.loads(open(f"{d}/{name}.out").read()) for name in ("classify", "embed", "openai")}
warm = next(r for t, r in rss if t >= 30)
out = {"seconds": total, "rss_kib": rss, "rss_after_warmup_mib": warm / 1024, "rss_end_mib": rss[-1][1] / 1024,
       "rss_peak_mib": max(r for _, r in rss) / 1024, "load": loads,
       "metrics": [l.strip() for l in open(f"{d}/metrics")]}
json.dump(out, open("bench/results/soak.json", "w"), indent=1)
print(f"memory (RSS): {out['rss_after_warmup_mib']:.0f} MiB after 30 s, {out['rss_end_mib']:.0f} MiB at {total} s, peak {out['rss_peak_mib']:.0f} MiB")
for name, r in loads.items():
    print(f"{name:<9} {r['requests']:>7} requests  {r['rps']:7.1f}/s  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}")
PY
