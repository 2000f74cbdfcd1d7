#!/usr/bin/env python3
"""Checks that a LoRA adapter written by `zhiku train --task sft` loads in Python PEFT over the
base that transformers reads from the same GGUF file, and that both give the same result:
the adapted model's greedy text for each prompt is the same in transformers + PEFT and in
`zhiku generate --adapter --exact` (whose products are f32 over the dequantised weights, as
transformers' are), and the adapter changes what the base alone writes.
Exits non-zero on any difference.

    bench/.peft-venv/bin/python scripts/check_sft_peft_interop.py runs/replies [--zhiku target/release/zhiku] [--tokens 24]
(needs torch, transformers, peft, gguf)
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from interop_prompts import PROMPTS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    ap.add_argument("--tokens", type=int, default=24)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    gguf = cfg.get("zhiku_base_model") or cfg["base_model_name_or_path"]
    folder, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, a.adapter).eval()
    failures = 0
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
        if not torch.is_tensor(ids):
            ids = ids["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=a.tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            with model.disable_adapter():
                plain = base.generate(input_ids=ids, max_new_tokens=a.tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        peft_text = tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
        base_text = tok.decode(plain[0][ids.shape[1]:], skip_special_tokens=True)
        z = subprocess.run([a.zhiku, "generate", "--adapter", a.adapter, "--exact", "--temperature", "0", "--max-tokens", str(a.tokens), "--json", prompt],
                           capture_output=True, text=True, check=True)
        zhiku_text = json.loads(z.stdout)["text"]
        same = zhiku_text.strip() == peft_text.strip()
        failures += not same
        print(json.dumps({"prompt": prompt, "same": same, "zhiku": zhiku_text, "peft": peft_text, "base": base_text, "adapter_changes_text": base_text != peft_text}, ensure_ascii=False))
    print(f"{len(PROMPTS) - failures} of {len(PROMPTS)} prompts: zhiku's greedy text equals transformers + PEFT's", file=sys.stderr)
    sys.exit(1 if failures else 0)


main()
