#!/usr/bin/env bash
# Training speed and memory of LoRA fine-tuning (`zhiku train --task sft`) against PyTorch + PEFT
# in the same run, on the same GGUF base, data and recipe: LoRA r 8 / alpha 16 on all seven
# projections, batch 4, rows of exactly MAX_LENGTH tokens (news articles under their headlines,
# cut at the length, so both sides see the same token count per step), AdamW lr 2e-4, clipping 1.0,
# fp32 on the CPU's cores. Each side runs with its activation checkpointing (zhiku recomputes each
# layer; transformers' gradient checkpointing) and without. The first step is not timed.
# MODE full trains every weight on both sides instead (`--peft none`; PyTorch without PEFT), for
# small models such as SmolLM2-135M.
#   bench/sft_speed.sh [MODEL.gguf] [STEPS] [MAX_LENGTH] [lora|full]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
steps="${2:-8}"
len="${3:-256}"
mode="${4:-lora}"
if [ "$mode" = full ]; then zflags=(--peft none); tflags=(--full); else zflags=(--lora-r 8 --lora-alpha 16); tflags=(); fi
DATA="${DATASETS:-../shared/datasets}"
work=.cache/bench/sft-speed-$mode
mkdir -p "$work" bench/results
[ -f "$model" ] || ./scripts/fetch-llms.sh >/dev/null
venv=bench/.peft-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers peft gguf accelerate rouge-score sentencepiece
fi
cargo build --release -q -p zhiku-cli
python3 - "$DATA/news-articles/articles.jsonl" "$work" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
with open(f"{sys.argv[2]}/train.jsonl", "w") as f:
    for r in rows[:64]:
        f.write(json.dumps({"prompt": "Write a news article under this headline: " + r["title"], "response": r["text"][:3000]}) + "\n")
with open(f"{sys.argv[2]}/dev.jsonl", "w") as f:
    f.write(json.dumps({"prompt": "Headline?", "response": rows[100]["title"]}) + "\n")
PY
run_zhiku() {
  local out="$work/zhiku$1"
  rm -rf "$out"
  /usr/bin/time -f "%e %M" -o "$out.time" target/release/zhiku train --task sft --model "$model" --train "$work/train.jsonl" --dev "$work/dev.jsonl" \
    --output "$out" --max-steps "$steps" --batch-size 4 --max-length "$len" "${zflags[@]}" --lr 2e-4 --quiet $2 > /dev/null
  python3 - "$out" "$len" "$1" <<'PY'
import json, sys
out, length, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
log = [json.loads(l) for l in open(f"{out}/train_log.jsonl") if '"step"' in l and '"eval"' not in l]
t = log[-1]["elapsed_s"] - log[0]["elapsed_s"]
peak = int(open(f"{out}.time").read().split()[1]) / 1024
print(json.dumps({"tool": "zhiku", "recompute": mode == "", "tokens_per_s": (len(log) - 1) * 4 * length / t, "seconds_per_step": t / (len(log) - 1),
                  "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"], "peak_rss_mib": peak}))
PY
}
{
  run_zhiku "" ""
  run_zhiku "-keep" "--no-recompute"
  "$venv/bin/python" bench/sft_torch.py --gguf "$model" --train "$work/train.jsonl" --steps "$steps" --batch-size 4 --max-length "$len" --recompute "${tflags[@]}" 2>/dev/null
  "$venv/bin/python" bench/sft_torch.py --gguf "$model" --train "$work/train.jsonl" --steps "$steps" --batch-size 4 --max-length "$len" "${tflags[@]}" 2>/dev/null
} | tee "$work/results.jsonl"
python3 - "$work/results.jsonl" "$model" "$len" "$mode" <<'PY'
import json, sys, datetime, os
r = [json.loads(l) for l in open(sys.argv[1])]
what = "Full fine-tuning" if sys.argv[4] == "full" else "LoRA fine-tuning"
print(f"\n{what}, {os.path.basename(sys.argv[2])}, batch 4 x {sys.argv[3]} tokens, {datetime.date.today()}\n")
ref = "PyTorch" if sys.argv[4] == "full" else "PyTorch + PEFT"
print(f"| activations | zhiku tokens/s | {ref} tokens/s | ratio | zhiku peak MiB | PyTorch peak MiB |")
print("|---|---|---|---|---|---|")
for rc in (True, False):
    z = next(x for x in r if x["tool"] == "zhiku" and x["recompute"] == rc)
    t = next(x for x in r if x["tool"] != "zhiku" and x["recompute"] == rc)
    name = "recomputed per layer" if rc else "all kept"
    print(f"| {name} | {z['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | {z['tokens_per_s'] / t['tokens_per_s']:.2f}x | {z['peak_rss_mib']:,.0f} | {t['peak_rss_mib']:,.0f} |")
suffix = "-full" if sys.argv[4] == "full" else ""
json.dump(r, open(f"bench/results/sft-speed-{os.path.basename(sys.argv[2])}-{sys.argv[3]}{suffix}.json", "w"), indent=1)
PY
