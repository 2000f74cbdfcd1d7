#!/usr/bin/env bash
# Recommendation at scale (issue 15), side by side with the `implicit` package in the same run:
#   1. synthetic logs of 100k, 1M and 10M interactions with a long tail of items and of users and
#      topic structure (bench/synth_interactions.py; users = n/20, items = n/10, so the 10M log
#      spreads over about a million items);
#   2. ALS and BPR with the same settings in zhiku and in implicit (2 threads each): fit time,
#      wall time of the whole command (reading the log and writing the model included) and peak
#      resident memory of the process (/usr/bin/time);
#   3. serving: `zhiku serve --recommender` with the ml-100k ALS model (1.6k items) and an ALS
#      model of a 10M-row log drawn over 2M item ids (the same shape; about 1.2M of them get
#      interactions, so top-k runs over more than a million items), loaded by wrk (Debian
#      package) with a random known user per request (/v1/recommend), a random item
#      (/v1/similar-items) and a new user's 10-item history (/v1/recommend with fold-in), at
#      concurrency 1 and 8: p50/p95/p99.
# Writes bench/results/recommend-scale.json and prints the tables.
#   bench/recommend_scale.sh                 (SIZES="100k 1m" for a shorter run; DURATION=10 s per cell)
set -euo pipefail
cd "$(dirname "$0")/.."
work=.cache/bench/scale
venv=bench/.rec-venv
SIZES="${SIZES:-100k 1m 10m}"
DURATION="${DURATION:-10}"
PORT=8097
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
mkdir -p "$work" bench/results
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import implicit, pandas" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q implicit==0.7.3 numpy scipy pandas
fi
cargo build --release -q -p zhiku-cli
Z="${ZHIKU:-target/release/zhiku}"
export OPENBLAS_NUM_THREADS=1
rows="$work/rows.jsonl"
: > "$rows"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# Same settings on both sides: implicit's ALS defaults but 64 factors; BPR with fewer passes than
# its default 100 (time per pass is what scales).
als=(--factors 64 --regularization 0.01 --alpha 1 --iterations 15)
bpr=(--factors 64 --learning-rate 0.01 --regularization 0.01 --iterations 20)

# timed OUT_JSON CMD...: runs CMD under GNU time, stdout to OUT_JSON, prints {"wall_s", "peak_rss_mb"}.
timed() {
  local out=$1; shift
  /usr/bin/time -f '%e %M' -o "$work/time.txt" "$@" > "$out"
  awk '{printf "{\"wall_s\": %s, \"peak_rss_mb\": %.1f}\n", $1, $2 / 1024}' "$work/time.txt"
}
record() { # size algo who train_json time_json
  python3 -c "import json,sys; t=json.loads(sys.argv[4]); m=json.loads(sys.argv[5]); print(json.dumps({'size': sys.argv[1], 'algorithm': sys.argv[2], 'who': sys.argv[3], 'fit_s': t.get('training', t).get('fit_seconds'), **m}))" "$@" | tee -a "$rows" >&2
}

for size in $SIZES; do
  case "$size" in
    100k) n=100000 ;; 1m) n=1000000 ;; 10m) n=10000000 ;; *) echo "unknown size $size" >&2; exit 1 ;;
  esac
  data="$work/interactions-$size.tsv"
  [ -f "$data" ] || "$venv/bin/python" bench/synth_interactions.py --interactions $n --users $((n / 20)) --items $((n / 10)) --seed 42 --output "$data" >&2
  for algo in als bpr; do
    if [ "$algo" = als ]; then set=("${als[@]}"); else set=("${bpr[@]}"); fi
    m=$(timed "$work/zhiku.json" "$Z" recommend train --interactions "$data" --algorithm $algo "${set[@]}" --no-tune --seed 42 --output "$work/models/zhiku-$algo-$size" --quiet --json)
    record "$size" $algo zhiku "$(cat "$work/zhiku.json")" "$m"
    m=$(timed "$work/implicit.json" "$venv/bin/python" bench/implicit_ref.py --train "$data" --algorithm $algo "${set[@]}" --seed 42 --output "$work/models/implicit-$algo-$size")
    record "$size" $algo implicit "$(cat "$work/implicit.json")" "$m"
  done
done

# 3. Serving latency.
small=.cache/bench/recommend/models/random-als  # bench/recommend.sh's, or trained here the same way
if [ ! -f "$small/recommender.json" ]; then
  [ -f .cache/bench/recommend/random/train.tsv ] || "$Z" recommend split --interactions ../shared/datasets/ml-100k/ratings.tsv --protocol random --seed 42 --output .cache/bench/recommend/random >/dev/null
  "$Z" recommend train --interactions .cache/bench/recommend/random/train.tsv --algorithm als --output "$small" --quiet --json >/dev/null
fi
serve_log="$work/interactions-serve.tsv"
[ -f "$serve_log" ] || "$venv/bin/python" bench/synth_interactions.py --interactions 10000000 --users 500000 --items 2000000 --seed 7 --output "$serve_log" >&2
big="$work/models/zhiku-als-serve"
[ -f "$big/recommender.json" ] || "$Z" recommend train --interactions "$serve_log" --algorithm als "${als[@]}" --no-tune --seed 42 --output "$big" --quiet --json >/dev/null
python3 - "$work" "$small" "$big" <<'PY'
import json, random, sys
work, small, big = sys.argv[1], sys.argv[2], sys.argv[3]
random.seed(42)
for name, d in (("ml100k", small), ("big", big)):
    ids = json.load(open(f"{d}/ids.json"))
    users, items = ids["users"], ids["items"]
    with open(f"{work}/{name}-recommend.jsonl", "w") as f:
        for _ in range(5000):
            f.write(json.dumps({"model": name, "user": random.choice(users), "k": 10}) + "\n")
    with open(f"{work}/{name}-similar.jsonl", "w") as f:
        for _ in range(5000):
            f.write(json.dumps({"model": name, "item": random.choice(items), "k": 10}) + "\n")
    with open(f"{work}/{name}-foldin.jsonl", "w") as f:
        for i in range(5000):
            f.write(json.dumps({"model": name, "user": f"new-user-{i}", "k": 10, "history": random.sample(items[:2000], 10)}) + "\n")
PY
"$Z" serve --recommender ml100k="$small" --recommender big="$big" --port $PORT 2> "$work/serve.log" &
for _ in $(seq 1 600); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.5; done
curl -sf "localhost:$PORT/health" >/dev/null || { echo "the server did not start: $(tail -3 "$work/serve.log")" >&2; exit 1; }
loads="$work/load.jsonl"
: > "$loads"
for model in ml100k big; do
  for case in recommend similar foldin; do
    route=/v1/recommend; [ "$case" = similar ] && route=/v1/similar-items
    for c in 1 8; do
      export BODIES_FILE="$work/$model-$case.jsonl" ROUTE=$route
      wrk -t "$(( c < 2 ? 1 : 2 ))" -c $c -d 2s -s bench/wrk_post.lua "http://127.0.0.1:$PORT" >/dev/null
      line=$(wrk -t "$(( c < 2 ? 1 : 2 ))" -c $c -d "${DURATION}s" --timeout 30s -s bench/wrk_post.lua "http://127.0.0.1:$PORT" | tail -1)
      echo "{\"model\": \"$model\", \"case\": \"$case\", \"concurrency\": $c, \"result\": $line}" | tee -a "$loads" >&2
    done
  done
done
kill %1 2>/dev/null || true

python3 - "$rows" "$loads" "$big" <<'PY'
import datetime, json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
loads = [json.loads(l) for l in open(sys.argv[2])]
big = json.load(open(os.path.join(sys.argv[3], "recommender.json")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
out = {"date": datetime.date.today().isoformat(), "cpu": cpu, "threads": 2, "command": "bench/recommend_scale.sh",
       "training": rows, "serving": loads, "big_model": {"users": big["users"], "items": big["items"], "interactions": big["interactions"]}}
tmp = "bench/results/recommend-scale.json.tmp"
json.dump(out, open(tmp, "w"), indent=1)
os.replace(tmp, "bench/results/recommend-scale.json")
by = {(r["size"], r["algorithm"], r["who"]): r for r in rows}
print(f"{'size':5} {'algo':4} | {'zhiku fit s':>11} {'wall s':>7} {'RSS MB':>7} | {'implicit fit s':>14} {'wall s':>7} {'RSS MB':>7} | {'fit x':>6} {'RSS x':>6}")
for (size, algo, who), z in by.items():
    if who != "zhiku" or (size, algo, "implicit") not in by:
        continue
    i = by[(size, algo, "implicit")]
    print(f"{size:5} {algo:4} | {z['fit_s']:11.2f} {z['wall_s']:7.1f} {z['peak_rss_mb']:7.0f} | {i['fit_s']:14.2f} {i['wall_s']:7.1f} {i['peak_rss_mb']:7.0f} | "
          f"{i['fit_s'] / z['fit_s']:5.2f}x {i['peak_rss_mb'] / z['peak_rss_mb']:5.2f}x")
print("fit x = implicit fit time / zhiku's (above 1: zhiku faster); RSS x = implicit peak memory / zhiku's")
print(f"\nserving ({big['items']} items in the big model)")
print(f"{'model':7} {'case':9} {'conc':>4} | {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'err':>4}")
for l in loads:
    r = l["result"]
    print(f"{l['model']:7} {l['case']:9} {l['concurrency']:>4} | {r['rps']:8.1f} {r['p50_ms']:7.2f} {r['p95_ms']:7.2f} {r['p99_ms']:7.2f} {r['errors']:>4}")
PY
