"""The PEFT row of bench/sft_quality.sh: greedy replies of a LoRA adapter trained by
bench/sft_torch.py, over the base that transformers reads from the same GGUF file, for every
conversation of a test file (the prompt is everything before its last assistant turn, rendered
with the model's chat template, as `zhiku eval --task generation` renders it). Writes JSONL
{"line", "prompt", "reference", "prediction"}, which `zhiku eval --task generation
--predictions` scores with the same scorer as zhiku's rows.

    python bench/peft_generate.py --gguf MODEL.gguf --adapter runs/peft --data test.jsonl --output preds.jsonl [--max-tokens 48]
"""
import argparse
import json
import os
import time

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def conversation(row):
    if "messages" in row:
        return row["messages"]
    m = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return m + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folder, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, a.adapter).eval()
    rows = []
    for i, line in enumerate(open(a.data, encoding="utf-8"), start=1):
        if line.strip():
            conv = conversation(json.loads(line))
            last = max(k for k, m in enumerate(conv) if m["role"] == "assistant")
            user = [m["content"] for m in conv[:last] if m["role"] == "user"]
            rows.append({"line": i, "context": conv[:last], "prompt": user[-1] if user else "", "reference": conv[last]["content"]})
    if a.limit:
        rows = rows[: a.limit]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start = time.time()
    out = []
    for b in range(0, len(rows), a.batch_size):
        group = rows[b: b + a.batch_size]
        texts = [tok.apply_chat_template(r["context"], tokenize=False, add_generation_prompt=True) for r in group]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=a.max_tokens, do_sample=False, pad_token_id=pad)
        for r, g in zip(group, gen):
            text = tok.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            out.append({"line": r["line"], "prompt": r["prompt"], "reference": r["reference"], "prediction": text})
    with open(a.output + ".tmp", "w", encoding="utf-8") as f:
        for r in out:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(a.output + ".tmp", a.output)
    print(json.dumps({"examples": len(out), "seconds": time.time() - start}))


main()
