#!/usr/bin/env bash
# User features for users without history (issue 15), on MovieLens-100K's users.tsv (age,
# gender, occupation): cold-users splits (a quarter of the interactions, all of them from users
# who then have none in training), three seeds. Rows per seed:
#   - zhiku ALS without user features: a cold user gets the most popular items;
#   - zhiku ALS with --users: the segment fallback, its weight and smoothing tuned on users held
#     out whole from the training file (never the test file);
#   - LightFM 1.17 (WARP) with the same user features, at its defaults (30 epochs, 32
#     components), and the best of a 6-setting sweep scored on the test file itself (an upper
#     bound for it; zhiku gets no such help).
# Writes bench/results/recommend-users.json and prints the table.
#   bench/recommend_users.sh            (SEEDS="1 2 3")
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/datasets/ml-100k
work=.cache/bench/recommend-users
SEEDS="${SEEDS:-1 2 3}"
venv=.cache/venvs/lightfm
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q setuptools wheel cython numpy scipy
  # lightfm's sdist imports numpy and Cython in its setup.py: build it in this venv.
  "$venv/bin/pip" install -q --no-build-isolation lightfm==1.17
fi
cargo build --release -q -p zhiku-cli
Z="${ZHIKU:-target/release/zhiku}"
rows="$work/rows.jsonl"
mkdir -p "$work"
: > "$rows"
for seed in $SEEDS; do
  split="$work/s$seed"
  $Z recommend split --interactions "$data/ratings.tsv" --protocol cold-users --seed "$seed" --output "$split" >/dev/null
  for variant in plain users; do
    extra=(); [ $variant = users ] && extra=(--users "$data/users.tsv" --user-features age,gender,occupation)
    start=$(date +%s.%N)
    $Z recommend train --interactions "$split/train.tsv" --algorithm als "${extra[@]}" --output "$work/m-$variant-$seed" --quiet
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    ev=$($Z recommend eval --model "$work/m-$variant-$seed" --test "$split/test.tsv" --json)
    chosen=$(python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['training'].get('user_features'); print(json.dumps(t and {'weight': t['weight'], 'smoothing': t['smoothing']}))" "$work/m-$variant-$seed/recommender.json")
    echo "{\"seed\": $seed, \"name\": \"zhiku als ($variant)\", \"train_seconds\": $secs, \"user_features\": $chosen, \"eval\": $ev}" >> "$rows"
  done
  ref=$("$venv/bin/python" bench/lightfm_ref.py "$split/train.tsv" "$split/test.tsv" "$data/users.tsv" --seed 42)
  echo "{\"seed\": $seed, \"name\": \"lightfm (defaults)\", \"eval\": $ref}" >> "$rows"
  best=""
  for e in 10 30 60; do for c in 16 64; do
    r=$("$venv/bin/python" bench/lightfm_ref.py "$split/train.tsv" "$split/test.tsv" "$data/users.tsv" --seed 42 --epochs $e --components $c)
    best=$(python3 -c "import json,sys; a=sys.argv[1] and json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(json.dumps(b if not a or b['ndcg@10']>a['ndcg@10'] else a))" "$best" "$r")
  done; done
  echo "{\"seed\": $seed, \"name\": \"lightfm (best of sweep on test)\", \"eval\": $best}" >> "$rows"
done
python3 - "$rows" <<'PY'
import datetime, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
names = list(dict.fromkeys(r["name"] for r in rows))
table = []
print(f"{'row':34} {'NDCG@10':>8} {'P@10':>7} {'R@10':>7}   per seed NDCG@10")
for n in names:
    rs = [r for r in rows if r["name"] == n]
    m = {k: statistics.mean(r["eval"][k] for r in rs) for k in ["ndcg@10", "precision@10", "recall@10"]}
    per = [round(r["eval"]["ndcg@10"], 4) for r in rs]
    table.append({"name": n, **m, "per_seed_ndcg@10": per})
    print(f"{n:34} {m['ndcg@10']:8.4f} {m['precision@10']:7.4f} {m['recall@10']:7.4f}   {per}")
out = {"date": datetime.date.today().isoformat(), "protocol": "cold-users, test ratio 0.25", "seeds": sorted({r["seed"] for r in rows}), "table": table, "rows": rows}
json.dump(out, open("bench/results/recommend-users.json", "w"), indent=1)
PY
