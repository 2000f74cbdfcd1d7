#!/usr/bin/env bash
# The SFT tasks on real data, side by side (issue 14): for each task, the rows
#   lead, extractive (headlines only: `zhiku summarize --method lead|extractive`, 1 sentence),
#   zero-shot and 3-shot (the base model, `zhiku eval --task generation`),
#   zhiku LoRA (`zhiku train --task sft`), PEFT LoRA (bench/sft_torch.py + bench/peft_generate.py),
# all on the same base (Qwen2.5-0.5B-Instruct Q4_K_M GGUF; transformers dequantises it to f32),
# the same fixed split (bench/splits, built by bench/sft_data.py) and the same recipe: LoRA r 8 /
# alpha 16 on all seven projections, AdamW lr 2e-4 (weight decay 0.01), linear schedule with 10%
# warm-up, clipping 1.0, batch 8, 1 epoch over the first TRAIN_N training conversations; greedy
# replies of at most 48 tokens. Every row is scored by the same scorer (`zhiku eval --task
# generation --predictions`), checked against rouge-score and sacrebleu on the same outputs
# (scripts/check_text_metrics.py). Steps whose output exists are skipped (rerun to resume): the
# predictions and training times are kept under bench/results/sft-runs/TASK/ (committed, so a
# run can be finished in another checkout and anyone can rescore them); adapters and copies of
# the data stay in .cache/bench/sft-quality/TASK/.
# SEEDS="42 7 13" trains and scores both LoRA rows once per seed (default 42 alone) and prints
# their mean and spread with each seed's paired interval.
#   bench/sft_quality.sh [replies|headlines ...]      (TRAIN_N_replies=1000 TRAIN_N_headlines=500)
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(replies headlines)
model=.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
data=.cache/sft-tasks
work=.cache/bench/sft-quality
venv=bench/.peft-venv
mkdir -p "$work" bench/results
[ -f "$model" ] || ./scripts/fetch-llms.sh >/dev/null
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import peft, rouge_score, sacrebleu" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers peft gguf accelerate rouge-score sacrebleu sentencepiece
fi
cargo build --release -q -p zhiku-cli
python3 bench/sft_data.py build "$data" >/dev/null
Z="${ZHIKU:-target/release/zhiku}"  # a copy keeps a long run steady while the tree is rebuilt
for task in "${tasks[@]}"; do
  case "$task" in
    replies) n="${TRAIN_N_replies:-1000}"; len=128 ;;
    headlines) n="${TRAIN_N_headlines:-500}"; len=256 ;;
    *) echo "unknown task $task" >&2; exit 1 ;;
  esac
  d="$work/$task"   # adapters, data
  r="bench/results/sft-runs/$task"   # predictions, training times
  mkdir -p "$d" "$r/preds"
  head -n "$n" "$data/$task/train.jsonl" > "$d/train.jsonl"
  test="$data/$task/test.jsonl"
  gen=(--max-tokens 48 --batch-size 32)
  if [ "$task" = headlines ]; then
    [ -f "$r/preds/lead.jsonl" ] || $Z summarize --method lead --sentences 1 "$data/$task/test-text.jsonl" --output "$r/preds/lead.jsonl"
    [ -f "$r/preds/extractive.jsonl" ] || $Z summarize --method extractive --sentences 1 "$data/$task/test-text.jsonl" --output "$r/preds/extractive.jsonl"
  fi
  [ -f "$r/preds/zero-shot.jsonl" ] || $Z eval --task generation --model "$model" --data "$test" "${gen[@]}" --output "$r/preds/zero-shot.jsonl"
  [ -f "$r/preds/3-shot.jsonl" ] || $Z eval --task generation --model "$model" --data "$test" --shots 3 --shots-from "$d/train.jsonl" "${gen[@]}" --output "$r/preds/3-shot.jsonl"
  # The two LoRA rows once per training seed (SEEDS, default 42; seed 42's rows keep the plain
  # names zhiku-lora and peft-lora, others end in -sSEED).
  for seed in ${SEEDS:-42}; do
    sfx=""; [ "$seed" = 42 ] || sfx="-s$seed"
    if [ ! -f "$d/zhiku-lora$sfx/adapter_model.safetensors" ] && [ ! -f "$r/preds/zhiku-lora$sfx.jsonl" ]; then
      /usr/bin/time -f "%e %M" -o "$r/zhiku-train$sfx.time" $Z train --task sft --model "$model" --train "$d/train.jsonl" --dev "$data/$task/dev.jsonl" \
        --output "$d/zhiku-lora$sfx" --overwrite --epochs 1 --batch-size 8 --max-length "$len" --lora-r 8 --lora-alpha 16 --lr 2e-4 \
        --weight-decay 0.01 --warmup-ratio 0.1 --schedule linear --max-grad-norm 1.0 --seed "$seed" --quiet --json > "$r/zhiku-train$sfx.json"
    fi
    [ -f "$r/preds/zhiku-lora$sfx.jsonl" ] || $Z eval --task generation --adapter "$d/zhiku-lora$sfx" --data "$test" "${gen[@]}" --output "$r/preds/zhiku-lora$sfx.jsonl"
    if [ ! -f "$d/peft-lora$sfx/adapter_model.safetensors" ] && [ ! -f "$r/preds/peft-lora$sfx.jsonl" ]; then
      /usr/bin/time -f "%e %M" -o "$r/peft-train$sfx.time" "$venv/bin/python" bench/sft_torch.py --gguf "$model" --train "$d/train.jsonl" --epochs 1 \
        --batch-size 8 --max-length "$len" --rank 8 --alpha 16 --lr 2e-4 --warmup-ratio 0.1 --recompute --seed "$seed" --output "$d/peft-lora$sfx" 2>/dev/null > "$r/peft-train$sfx.json"
    fi
    [ -f "$r/preds/peft-lora$sfx.jsonl" ] || "$venv/bin/python" bench/peft_generate.py --gguf "$model" --adapter "$d/peft-lora$sfx" --data "$test" --max-tokens 48 --output "$r/preds/peft-lora$sfx.jsonl" 2>/dev/null
    # zhiku's adapter against PEFT's, example by example (paired bootstrap of ROUGE-L).
    "$venv/bin/python" bench/paired_bootstrap.py "$r/preds/zhiku-lora$sfx.jsonl" "$r/preds/peft-lora$sfx.jsonl" > "$r/zhiku-vs-peft$sfx.json"
  done
  "$venv/bin/python" scripts/check_text_metrics.py "$r"/preds/*.jsonl --zhiku "$Z" > "$r/metrics-check.jsonl"
  python3 - "$r" "$task" "$n" "$Z" <<'PY'
import datetime, json, os, statistics, subprocess, sys
d, task, n, z = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seeded = lambda side: sorted((f[:-6] for f in os.listdir(f"{d}/preds") if f.startswith(side + "-lora")), key=lambda f: (f != side + "-lora", f))
order = ["lead", "extractive", "zero-shot", "3-shot"] + seeded("zhiku") + seeded("peft")
rows = []
for name in order:
    p = f"{d}/preds/{name}.jsonl"
    if os.path.exists(p):
        s = json.loads(subprocess.run([z, "eval", "--task", "generation", "--predictions", p, "--json"], capture_output=True, text=True, check=True).stdout)
        rows.append({"row": name, **s})
train = {}
for name in seeded("zhiku") + seeded("peft"):
    side = name.replace("-lora", "-train")
    if os.path.exists(f"{d}/{side}.time"):
        secs, kib = open(f"{d}/{side}.time").read().split()[:2]
        train[name.replace("-lora", "")] = {"seconds": float(secs), "peak_rss_mib": int(kib) / 1024}
pairs = {}  # seed -> zhiku LoRA against PEFT LoRA (paired bootstrap)
for name in seeded("zhiku"):
    sfx = name[len("zhiku-lora"):]
    if os.path.exists(f"{d}/zhiku-vs-peft{sfx}.json"):
        pairs[sfx[2:] or "42"] = json.load(open(f"{d}/zhiku-vs-peft{sfx}.json"))
# Earlier runs whose predictions were not kept (earlier-seed-N.json): their LoRA rows and
# paired difference join the seed summary.
earlier = {f[len("earlier-seed-"):-5]: json.load(open(f"{d}/{f}")) for f in sorted(os.listdir(d)) if f.startswith("earlier-seed-") and f.endswith(".json")}
for seed, e in earlier.items():
    pairs.setdefault(seed, e["zhiku_vs_peft_rougeL"])
checks = [json.loads(l) for l in open(f"{d}/metrics-check.jsonl")]
out = {"task": task, "date": str(datetime.date.today()), "train_examples": n, "test_examples": rows[0]["examples"] if rows else 0,
       "rows": rows, "training": train, "scores_match_reference_packages": all(c["same"] for c in checks),
       "zhiku_vs_peft_rougeL": pairs.get("42"), "zhiku_vs_peft_rougeL_per_seed": pairs, "earlier_runs": earlier}
json.dump(out, open(f"bench/results/sft-quality-{task}.json", "w"), indent=1, ensure_ascii=False)
unit = "characters" if rows and rows[0]["language"] == "zh" else "words"
print(f"\n{task}: {out['test_examples']} test examples, LoRA on {n} training conversations, {out['date']}\n")
print(f"| row | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU | mean length ({unit}) |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['row']} | {r['rouge1']['f1']:.2f} | {r['rouge2']['f1']:.2f} | {r['rougeL']['f1']:.2f} | {r['bleu']:.2f} | {r['prediction_length']['mean']:.1f} (reference {r['reference_length']['mean']:.1f}) |")
for seed, e in earlier.items():
    for r in e["rows"]:
        print(f"| {r['row']}, seed {seed} ({e['date']}, predictions not kept) | {r['rouge1']['f1']:.2f} | {r['rouge2']['f1']:.2f} | {r['rougeL']['f1']:.2f} | {r['bleu']:.2f} | {r['prediction_length']['mean']:.1f} (reference {r['reference_length']['mean']:.1f}) |")
print(f"\ntraining: {train}; scores equal rouge-score's and sacrebleu's: {out['scores_match_reference_packages']}")
for seed, v in out["zhiku_vs_peft_rougeL_per_seed"].items():
    print(f"zhiku LoRA - PEFT LoRA, ROUGE-L, seed {seed}: {v['rougeL_difference']:+.2f}, 95% interval [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]")
for side in ["zhiku", "peft"]:
    vals = [r["rougeL"]["f1"] for r in rows + [r for e in earlier.values() for r in e["rows"]] if r["row"].startswith(side + "-lora")]
    if len(vals) > 1:
        print(f"{side} LoRA ROUGE-L over {len(vals)} seeds: mean {statistics.mean(vals):.2f}, sd {statistics.stdev(vals):.2f}")
# 20 samples for the README.
preds = {name: [json.loads(l) for l in open(f"{d}/preds/{name}.jsonl")] for name in order if os.path.exists(f"{d}/preds/{name}.jsonl")}
# Each LoRA side's first seed with predictions (seed 42's plain name when it has them).
gen = [k for k in ["zero-shot", "3-shot"] if k in preds] + [s[0] for s in (seeded("zhiku"), seeded("peft")) if s]
with open(f"bench/results/sft-samples-{task}.md", "w") as f:
    f.write(f"| input | reference | {' | '.join(gen)} |\n|{'---|' * (2 + len(gen))}\n")
    cell = lambda s: s.replace("|", "\\|").replace("\n", " ")
    for i in range(min(20, len(preds[gen[0]]))):
        prompt = preds[gen[0]][i]["prompt"]
        prompt = prompt.split("\n\n", 1)[-1]
        prompt = prompt[:160] + ("…" if len(prompt) > 160 else "")
        f.write(f"| {cell(prompt)} | {cell(preds[gen[0]][i]['reference'])} | " + " | ".join(cell(preds[k][i]["prediction"]) for k in gen) + " |\n")
PY
done
