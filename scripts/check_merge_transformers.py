#!/usr/bin/env python3
"""Checks `zhiku merge` to a Hugging Face folder against transformers: merges a decoder's LoRA
adapter into its base as a folder (f32), loads it with transformers' AutoModelForCausalLM and
AutoTokenizer, and compares the greedy text and prompt tokens for each prompt with
`zhiku generate --model FOLDER --exact` and with the unmerged `zhiku generate --adapter --exact`.
Exits non-zero on any difference.

    bench/.peft-venv/bin/python scripts/check_merge_transformers.py runs/replies [--zhiku target/release/zhiku] [--tokens 24]
"""
import argparse
import json
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interop_prompts import PROMPTS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    ap.add_argument("--tokens", type=int, default=24)
    a = ap.parse_args()
    folder = tempfile.mkdtemp() + "/merged"
    m = subprocess.run([a.zhiku, "merge", "--adapter", a.adapter, "--output", folder, "--dtype", "f32", "--json"], capture_output=True, text=True, check=True)
    print(m.stdout.strip(), file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    failures = 0
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
        if not torch.is_tensor(ids):
            ids = ids["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=a.tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        hf = tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
        run = lambda extra: json.loads(subprocess.run([a.zhiku, "generate", *extra, "--exact", "--temperature", "0", "--max-tokens", str(a.tokens), "--json", prompt],
                                                      capture_output=True, text=True, check=True).stdout)
        merged, adapter = run(["--model", folder]), run(["--adapter", a.adapter])
        same = hf.strip() == merged["text"].strip() and ids.shape[1] == merged["prompt_tokens"]
        failures += not same
        print(json.dumps({"prompt": prompt, "same": same, "transformers": hf, "zhiku_merged": merged["text"], "zhiku_adapter": adapter["text"],
                          "merged_equals_adapter": merged["text"].strip() == adapter["text"].strip()}, ensure_ascii=False))
    print(f"{len(PROMPTS) - failures} of {len(PROMPTS)} prompts: transformers' greedy text on the merged folder equals zhiku's", file=sys.stderr)
    sys.exit(1 if failures else 0)


main()
