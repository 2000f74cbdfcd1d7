#!/usr/bin/env bash
# Peak memory of LoRA fine-tuning at long rows (issue 14: "a 0.5B model trains at 512 tokens
# within 8 GB"): `zhiku train --task sft` on Qwen2.5-Coder-0.5B-Instruct Q4_K_M, LoRA r 8 on all
# seven projections, rows of exactly MAX_LENGTH tokens (news articles under their headlines, cut
# at the length), batch BATCH, STEPS steps, activations recomputed per layer (the default; keeping
# them all at 8 x 512 would need about 45 GB). Prints peak resident memory and tokens/s; writes
# bench/results/sft-memory-MAX_LENGTH.json.
#   bench/sft_memory.sh [MAX_LENGTH=512] [BATCH=8] [STEPS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
len="${1:-512}"
batch="${2:-8}"
steps="${3:-3}"
model=.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
DATA="${DATASETS:-../shared/datasets}"
work=.cache/bench/sft-memory
mkdir -p "$work" bench/results
[ -f "$model" ] || ./scripts/fetch-llms.sh >/dev/null
cargo build --release -q -p zhiku-cli
python3 - "$DATA/news-articles/articles.jsonl" "$work" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
long = [r for r in rows if len(r["text"]) >= 4000][:64]
with open(f"{sys.argv[2]}/train.jsonl", "w") as f:
    for r in long:
        f.write(json.dumps({"prompt": "Write a news article under this headline: " + r["title"], "response": r["text"][:6000]}) + "\n")
with open(f"{sys.argv[2]}/dev.jsonl", "w") as f:
    f.write(json.dumps({"prompt": "Headline?", "response": rows[100]["title"]}) + "\n")
PY
out="$work/recompute"
rm -rf "$out"
/usr/bin/time -f "%e %M" -o "$out.time" target/release/zhiku train --task sft --model "$model" --train "$work/train.jsonl" --dev "$work/dev.jsonl" \
  --output "$out" --max-steps "$steps" --batch-size "$batch" --max-length "$len" --lora-r 8 --lora-alpha 16 --lr 2e-4 --quiet > /dev/null
python3 - "$work" "$len" "$batch" "$steps" <<'PY'
import datetime, json, sys
work, length, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {"date": str(datetime.date.today()), "model": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "max_length": length, "batch_size": batch, "steps": steps, "runs": []}
for mode in ["recompute"]:
    log = [json.loads(l) for l in open(f"{work}/{mode}/train_log.jsonl") if '"step"' in l and '"eval"' not in l]
    secs, kib = open(f"{work}/{mode}.time").read().split()[:2]
    t = log[-1]["elapsed_s"] - log[0]["elapsed_s"] if len(log) > 1 else float("nan")
    out["runs"].append({"activations": mode, "peak_rss_mib": int(kib) / 1024, "tokens_per_s": (len(log) - 1) * batch * length / t if len(log) > 1 else None, "seconds": float(secs)})
json.dump(out, open(f"bench/results/sft-memory-{length}.json", "w"), indent=1)
print(f"\nLoRA on Qwen2.5-0.5B Q4_K_M, batch {batch} x {length} tokens, {steps} steps, {out['date']}\n")
print("| activations | peak memory | tokens/s |\n|---|---|---|")
for r in out["runs"]:
    print(f"| {r['activations']} | {r['peak_rss_mib']:,.0f} MiB | {r['tokens_per_s'] or float('nan'):.0f} |")
PY
