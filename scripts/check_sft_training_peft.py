#!/usr/bin/env python3
"""Checks that `zhiku train --task sft` takes the same training steps as PyTorch + PEFT on a
real model: from the same starting adapter (PEFT's LoRA with B drawn at random, so that every
tensor has a gradient from the first step; zhiku starts from it with --init-adapter), on the
same conversations (all in one batch each step, so the data order cannot differ), with the same
recipe (AdamW with weight decay 0.01, a constant learning rate, global norm clipped at 1.0),
each step's loss and gradient norm and the adapter after the last step must agree.
transformers reads the base from the same GGUF file (dequantised to f32); zhiku keeps it
quantised and multiplies over the dequantised blocks. Exits non-zero on a difference.

    bench/.peft-venv/bin/python scripts/check_sft_training_peft.py \
        --gguf .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --data conversations.jsonl \
        [--zhiku target/release/zhiku] [--steps 3] [--lr 1e-3] [--rank 8] [--alpha 16]
(needs torch, transformers, peft, gguf)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../bench"))
from sft_torch import TARGETS, batch_tensors, conversation, encode, sft_loss  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", required=True, help="JSONL conversations, trained on as one batch")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="sft-steps-")
    folder, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.01)
    start = os.path.join(work, "start")
    model.save_pretrained(start)
    cfg_path = os.path.join(start, "adapter_config.json")
    c = json.load(open(cfg_path))
    c["base_model_name_or_path"] = os.path.abspath(a.gguf)
    json.dump(c, open(cfg_path, "w"), indent=2)
    before = load_file(os.path.join(start, "adapter_model.safetensors"))

    rows = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()]
    data = [encode(tok, conversation(r), a.max_length) for r in rows]
    input_ids, mask, labels = batch_tensors(data)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    peft_steps = []
    for _ in range(a.steps):
        loss = sft_loss(model(input_ids=input_ids, attention_mask=mask).logits, labels)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        peft_steps.append((loss.item(), norm))
    theirs = os.path.join(work, "peft")
    model.save_pretrained(theirs)
    peft_after = load_file(os.path.join(theirs, "adapter_model.safetensors"))

    ours = os.path.join(work, "zhiku")
    subprocess.run([a.zhiku, "train", "--task", "sft", "--model", a.gguf, "--train", a.data, "--dev", a.data, "--init-adapter", start,
                    "--epochs", str(a.steps), "--batch-size", str(len(data)), "--lr", str(a.lr), "--warmup-ratio", "0", "--schedule", "constant",
                    "--weight-decay", "0.01", "--max-grad-norm", "1.0", "--eval-steps", str(a.steps), "--max-length", str(a.max_length),
                    "--output", ours, "--overwrite", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    log = [json.loads(l) for l in open(os.path.join(ours, "train_log.jsonl")) if '"grad_norm"' in l]
    zhiku_after = load_file(os.path.join(ours, "adapter_model.safetensors"))

    failures = 0
    steps = []
    for k, ((pl, pn), z) in enumerate(zip(peft_steps, log)):
        dl, dn = abs(z["loss"] - pl) / pl, abs(z["grad_norm"] - pn) / pn
        ok = dl <= 1e-4 and dn <= 1e-3
        failures += not ok
        steps.append({"step": k + 1, "peft_loss": pl, "zhiku_loss": z["loss"], "loss_rel_diff": dl, "peft_grad_norm": pn, "zhiku_grad_norm": z["grad_norm"], "norm_rel_diff": dn})
    failures += len(log) != len(peft_steps)
    # Each tensor's difference as a share of how far training moved it (Frobenius norms). Not
    # the largest element: Adam moves every element by about lr whatever its gradient's size,
    # so an element whose gradient is nearly zero takes a step of either sign on float32
    # rounding alone, in PyTorch as in zhiku.
    shares = []
    for n, want in peft_after.items():
        moved = (want - before[n]).double().norm().item()
        shares.append((zhiku_after[n] - want).double().norm().item() / moved)
    shares.sort()
    worst = shares[-1]
    failures += worst > 2e-2 or set(zhiku_after) != set(peft_after)
    print(json.dumps({"model": name, "conversations": len(data), "learned_tokens": int((labels[:, 1:] != -100).sum()), "steps": steps,
                      "adapter_diff_share_of_movement": {"median": shares[len(shares) // 2], "max": worst}, "tensors": len(peft_after), "same": failures == 0}, indent=1))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
