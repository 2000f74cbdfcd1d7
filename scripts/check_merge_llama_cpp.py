#!/usr/bin/env python3
"""Checks `zhiku merge` for decoders against llama.cpp: merges a LoRA adapter into its GGUF base
as GGUF F16 and Q8_0, loads each merged file in llama.cpp (llama-cpp-python), and greedily
decodes the same prompts there and in `zhiku generate --model MERGED`; also decodes with the
unmerged adapter (`zhiku generate --adapter`). Prompts are the base's chat template rendered
with jinja2 and given to both as raw text, so both see the same tokens (checked).
Prints one JSON line per prompt and file, and a summary; exits non-zero if any text differs.

    bench/llama_venv.sh
    bench/.llama-venv/bin/python scripts/check_merge_llama_cpp.py runs/replies [--zhiku target/release/zhiku] [--tokens 24]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import jinja2
from llama_cpp import Llama

from interop_prompts import PROMPTS


def zhiku_generate(zhiku, args, prompt, tokens):
    out = subprocess.run([zhiku, "generate", *args, "--raw", "--temperature", "0", "--max-tokens", str(tokens), "--json", prompt],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


END_OF_TURN = {"<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"}


def llama_generate(llm, prompt, tokens):
    """Greedy decoding in llama.cpp, stopping at an end-of-turn token as zhiku does."""
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(tokens):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        if tok == llm.token_eos() or llm.detokenize([tok], special=True).decode("utf-8", "replace") in END_OF_TURN:
            break
        out.append(tok)
        llm.eval([tok])
    return len(ids), out, llm.detokenize(out).decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--keep", help="folder to keep the merged files in (default: a temporary one)")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    failures, checks = 0, 0
    for dtype in ["f16", "q8_0"]:
        path = os.path.join(work, f"merged-{dtype}.gguf")
        m = subprocess.run([a.zhiku, "merge", "--adapter", a.adapter, "--output", path, "--dtype", dtype, "--overwrite", "--json"],
                           capture_output=True, text=True, check=True)
        print(m.stdout.strip(), file=sys.stderr)
        # logits_all: otherwise this llama-cpp-python leaves `scores` at zero after `eval`.
        llm = Llama(model_path=path, n_ctx=512, n_threads=os.cpu_count(), logits_all=True, verbose=False)
        meta = llm.metadata
        tok_of = lambda key: llm.detokenize([int(meta[key])], special=True).decode() if key in meta else ""
        template = jinja2.Environment(loader=jinja2.BaseLoader()).from_string(meta["tokenizer.chat_template"])
        for prompt in PROMPTS:
            text = template.render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   bos_token=tok_of("tokenizer.ggml.bos_token_id"), eos_token=tok_of("tokenizer.ggml.eos_token_id"))
            n_prompt, ids, llama_text = llama_generate(llm, text, a.tokens)
            merged = zhiku_generate(a.zhiku, ["--model", path], text, a.tokens)
            adapter = zhiku_generate(a.zhiku, ["--adapter", a.adapter], text, a.tokens)
            same = merged["text"].strip() == llama_text.strip()
            checks += 1
            failures += not same
            print(json.dumps({"file": os.path.basename(path), "prompt": prompt, "same": same, "same_prompt_tokens": n_prompt == merged["prompt_tokens"],
                              "llama_cpp": llama_text, "zhiku_merged": merged["text"], "zhiku_adapter": adapter["text"],
                              "merged_equals_adapter": merged["text"].strip() == adapter["text"].strip()}, ensure_ascii=False))
    print(f"{checks - failures} of {checks} prompts: llama.cpp's greedy text on the merged GGUF equals zhiku's", file=sys.stderr)
    sys.exit(1 if failures else 0)


main()
