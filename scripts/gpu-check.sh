#!/usr/bin/env bash
# The GPU check for the `cuda` feature, run on a lent NVIDIA machine (the device tool) from the
# .gpu/ folder that scripts/gpu-build.sh packs here:
#
#   run(command="bash scripts/gpu-check.sh", carry=[".gpu"], timeout_s=540)
#
# It prints, and writes to $OUT/gpu-check.log:
#   1. zhiku bench on the GPU in fp32, bf16 and fp16 (f32 master weights), each against PyTorch
#      on the same GPU in the same run (torch.autocast for the half precisions), at the issue's
#      shapes (train 16x128, inference 32x128) and at a GPU-sized inference batch (256x128);
#   2. one epoch of BBC News fine-tuning in fp32, bf16 and fp16: test accuracy, seconds, and the
#      fp16 run's loss scale (skipped steps);
#   3. the bf16-trained model's probabilities on the test split, GPU against CPU (same binary,
#      ZHIKU_DEVICE=cpu): max abs difference and label agreement;
#   4. greedy generation with the tiny qwen2/llama/gemma3 models on the GPU (graph engine, bf16)
#      against the CPU engine, and bench --generate on the GPU.
# Each part runs even if an earlier one fails; the exit status is that of the first failure.
# About 3-5 minutes on an H200 machine (most of it PyTorch start-up and BBC evaluation).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
status=0
fail() { echo "FAILED: $*"; [ $status -ne 0 ] || status=1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || fail "nvidia-smi"
Z=/tmp/zhiku
xz -dc .gpu/zhiku.xz > $Z && chmod +x $Z || { echo "no .gpu/zhiku.xz: run scripts/gpu-build.sh first"; exit 2; }
# cuBLAS, cuRAND and the CUDA runtime from wherever the machine keeps them (the PyTorch wheels, or
# a toolkit); libcuda.so.1 is the driver's.
dirs=""
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10; do
  f=$(find /usr/local /opt /usr/lib /usr/lib64 -name "$lib" 2>/dev/null | head -1)
  [ -n "$f" ] && dirs="$dirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd $Z | grep "not found"; then fail "libraries missing"; fi
M=.gpu/minilm
D=/tmp/bbc; mkdir -p $D
for s in train dev test; do xz -dc .gpu/bbc/$s.jsonl.xz > $D/$s.jsonl; done
PY=python3
STEPS="${STEPS:-20}"   # timed steps and batches per bench cell; MAX_STEPS=N shortens training (dry runs)
timer() { local t0=$SECONDS; "$@"; echo "($(( SECONDS - t0 )) s)"; }

echo "== 1. bench: zhiku against PyTorch on the same GPU =="
for p in fp32 bf16 fp16; do
  for shape in "--train-batch 16 --infer-batch 32" "--no-train --infer-batch 256"; do
    ref="$PY bench/torch_bench.py --model $M --device cuda --precision $p --steps $STEPS --batches $STEPS --no-ort $shape"
    ref="${ref/--no-train/--steps 1}"
    echo "-- $p, $shape"
    timer $Z bench --model $M --precision $p --steps $STEPS --batches $STEPS --seq 128 $shape \
      --reference "$ref 2>/dev/null" --json > "$OUT/bench-$p-${shape// /_}.json" || fail "bench $p $shape"
    [ -s "$OUT/bench-$p-${shape// /_}.json" ] && $PY - "$OUT/bench-$p-${shape// /_}.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); z, t = r["zhiku"], r["reference"]
print(f"   device {r['device']}")
if z.get("train"): print(f"   train 16x128: zhiku {z['train']['median_s']*1e3:.1f} ms/step, torch {t['train_s_per_step']*1e3:.1f} ms/step -> {r.get('train_speedup', 0):.2f}x")
if z.get("infer"): print(f"   infer {z['infer']['batch']}x128: zhiku {z['infer']['seq_per_s']:.0f} seq/s, torch {t['torch_infer_seq_per_s']:.0f} seq/s -> {r.get('infer_speedup', 0):.2f}x")
PY
  done
done

echo "== 2. BBC News, one epoch, fp32 / bf16 / fp16 =="
for p in fp32 bf16 fp16; do
  timer $Z train --model $M --train $D/train.jsonl --dev $D/dev.jsonl --test $D/test.jsonl --output /tmp/run-$p --overwrite \
    --epochs 1 --batch-size 16 --lr 1e-4 --max-length 128 --seed 42 --precision $p ${MAX_STEPS:+--max-steps $MAX_STEPS} > "$OUT/train-$p.txt" 2>&1 || { tail -20 "$OUT/train-$p.txt"; fail "train $p"; continue; }
  $PY - /tmp/run-$p $p <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json")); s = m["summary"]
log = [json.loads(l) for l in open(sys.argv[1] + "/train_log.jsonl")]
skipped = sum(1 for l in log if l.get("skipped"))
print(f"   {sys.argv[2]}: test accuracy {s['test']['accuracy']:.4f}, macro-F1 {s['test']['macro_f1']:.4f}, {s['steps']} steps in {s['seconds']:.1f} s, skipped steps {skipped}")
PY
done

echo "== 3. GPU against CPU on the bf16-trained model (test split) =="
if [ -f /tmp/run-bf16/config.json ]; then
  $Z predict --model /tmp/run-bf16 --file $D/test.jsonl --top-k 5 --json > /tmp/gpu.jsonl || fail "predict gpu"
  ZHIKU_DEVICE=cpu $Z predict --model /tmp/run-bf16 --file $D/test.jsonl --top-k 5 --json > /tmp/cpu.jsonl || fail "predict cpu"
  $PY - /tmp/gpu.jsonl /tmp/cpu.jsonl <<'PY' || status=1
import json, sys
def rows(f):
    return [json.loads(l) for l in open(f) if l.strip()]
g, c = rows(sys.argv[1]), rows(sys.argv[2])
assert len(g) == len(c) > 0, (len(g), len(c))
def probs(r):
    return {p["label"]: p["score"] for p in r["scores"]}
diff = max(abs(probs(a)[k] - probs(b)[k]) for a, b in zip(g, c) for k in probs(a))
agree = sum(a["scores"][0]["label"] == b["scores"][0]["label"] for a, b in zip(g, c))
print(f"   {len(g)} texts: max |p_gpu - p_cpu| = {diff:.2e}, top label agrees on {agree}/{len(g)}")
sys.exit(0 if diff < 1e-3 and agree == len(g) else 1)
PY
fi

echo "== 4. text generation: graph engine on the GPU (bf16 weights) against the CPU engine =="
# The tiny random models travel with the repository (a real GGUF does not fit the carry).
for m in qwen2 llama gemma3; do
  F=tests/fixtures/tiny-llm/$m
  args=(generate --model $F --raw --temperature 0 --max-tokens 24 --json "The capital of France is")
  $Z "${args[@]}" > /tmp/gen-gpu-$m.json 2>/tmp/gen-gpu-$m.err || { cat /tmp/gen-gpu-$m.err; fail "generate gpu $m"; continue; }
  ZHIKU_DEVICE=cpu $Z "${args[@]}" > /tmp/gen-cpu-$m.json 2>/dev/null || { fail "generate cpu $m"; continue; }
  $PY - /tmp/gen-gpu-$m.json /tmp/gen-cpu-$m.json $m <<'PY'
import json, sys
g, c = (json.load(open(f)) for f in sys.argv[1:3])
same = sum(1 for a, b in zip(g["text"], c["text"]) if a == b)
print(f"   {sys.argv[3]}: same text: {g['text'] == c['text']} (first {same} characters agree); gpu decode {g['decode_tokens_per_s']:.0f} tokens/s")
PY
done
timer $Z bench --generate tests/fixtures/tiny-llm/qwen2 --prompt-tokens 128 --streams 1,4 --decode-tokens 32 || fail "bench --generate on the GPU"
echo "exit status $status"
exit $status
