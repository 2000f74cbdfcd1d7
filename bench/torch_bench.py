"""PyTorch (+ ONNX Runtime) reference for `zhiku bench`: the same model, shapes and step.

Training: BertForSequenceClassification (5 labels), train mode (dropout on), AdamW
(weight decay 0.01), batch TRAIN_BATCH x SEQ random tokens; median seconds per step over STEPS
after one warm-up, for eager and SDPA attention. Inference: eval mode, no_grad, INFER_BATCH x SEQ,
sequences per second; and ONNX Runtime on the same model exported to ONNX, if installed (CPU only).
Prints one JSON object on the last line (train_s_per_step = the faster attention).
--device cuda --precision bf16|fp16 measures the GPU with torch.autocast (f32 master weights),
the counterpart of `zhiku bench --precision`.

    python bench/torch_bench.py --model .cache/models/all-MiniLM-L6-v2 [--device cuda --precision bf16]
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import contextlib

import torch
from transformers import AutoConfig, BertForSequenceClassification


DEVICE = "cpu"
AUTOCAST = None  # torch dtype for torch.autocast, or None for fp32


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def autocast():
    return torch.autocast(DEVICE, dtype=AUTOCAST) if AUTOCAST is not None else contextlib.nullcontext()


def train_bench(model_dir, attn, batch, seq, steps):
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=5, attn_implementation=attn, dtype=torch.float32).to(DEVICE)
    model.train()
    scaler = torch.amp.GradScaler(DEVICE, enabled=AUTOCAST == torch.float16)
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-5)
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (batch, seq), device=DEVICE)
    mask = torch.ones_like(ids)
    labels = torch.arange(batch, device=DEVICE) % 5
    times, fwd, bwd, upd = [], [], [], []
    for step in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        sync()
        t1 = time.perf_counter()
        scaler.scale(out.loss).backward()
        sync()
        t2 = time.perf_counter()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if step > 0:
            times.append(t3 - t0); fwd.append(t1 - t0); bwd.append(t2 - t1); upd.append(t3 - t2)
    return {"s_per_step": statistics.median(times), "forward_s": statistics.median(fwd),
            "backward_s": statistics.median(bwd), "optimizer_s": statistics.median(upd)}


def infer_bench(model_dir, batch, seq, batches):
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=5, attn_implementation="sdpa", dtype=torch.float32).to(DEVICE).eval()
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), device=DEVICE)
    mask = torch.ones_like(ids)
    with torch.inference_mode(), autocast():
        model(input_ids=ids, attention_mask=mask)
        sync()
        t0 = time.perf_counter()
        for _ in range(batches):
            model(input_ids=ids, attention_mask=mask)
        sync()
        secs = time.perf_counter() - t0
    return batch * batches / secs, model, ids, mask


def ort_bench(model, ids, mask, batches):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    model = model.eval()
    with torch.no_grad():
        try:
            torch.onnx.export(model, (ids, mask), path, input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}, opset_version=17, dynamo=False)
        except Exception as e:  # the exporter's own dependencies may be missing
            print(f"onnx export failed: {e}", file=sys.stderr)
            return None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    sess.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(batches):
        sess.run(None, feed)
    return ids.shape[0] * batches / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=".cache/models/all-MiniLM-L6-v2")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    a = ap.parse_args()
    global DEVICE, AUTOCAST
    DEVICE = a.device
    AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
    torch.set_num_threads(os.cpu_count())
    infer, model, ids, mask = infer_bench(a.model, a.infer_batch, a.seq, a.batches)
    ort_rate = None if a.no_ort or DEVICE != "cpu" or AUTOCAST is not None else ort_bench(model, ids, mask, a.batches)
    del model
    eager = train_bench(a.model, "eager", a.train_batch, a.seq, a.steps)
    sdpa = train_bench(a.model, "sdpa", a.train_batch, a.seq, a.steps)
    best = min(eager["s_per_step"], sdpa["s_per_step"])
    print(json.dumps({
        "torch": torch.__version__, "device": DEVICE, "precision": a.precision, "threads": torch.get_num_threads(),
        "train_s_per_step": best, "train_eager": eager, "train_sdpa": sdpa,
        "infer_seq_per_s": max(infer, ort_rate or 0.0), "torch_infer_seq_per_s": infer, "ort_infer_seq_per_s": ort_rate,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
