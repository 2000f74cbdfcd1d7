"""The PyTorch + PEFT side of the SFT comparisons: LoRA on a decoder (or, with --full, every
weight) with the recipe zhiku's `train --task sft` uses, on the same data, reporting speed,
memory and the loss.

The base comes from the same GGUF file zhiku trains on (transformers dequantises it to f32).
Conversations are formatted as zhiku formats them: the chat template rendered up to each
assistant turn and through it, each piece tokenised on its own, loss only on the assistant's
tokens (end-of-turn included), summed and divided by the step's number of such tokens. AdamW
(weight decay 0.01 on A and B), linear schedule with warm-up, gradient clipping at 1.0. Rows of
a batch are padded on the right; `--recompute` turns on transformers' gradient checkpointing
(zhiku recomputes each layer by default).

    python bench/sft_torch.py --gguf .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --train data.jsonl --steps 10 --batch-size 4 --max-length 256 [--recompute] [--output DIR]
Prints one JSON object.
"""
import argparse
import json
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def conversation(row):
    if "messages" in row:
        return row["messages"]
    m = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return m + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def encode(tok, messages, max_length):
    ids, learn, done = [], [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        assert before.startswith(done) and through.startswith(before)
        for text, flag in ((before[len(done):], False), (through[len(before):], True)):
            piece = tok(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            learn += [flag] * len(piece)
        done = through
    return ids[:max_length], learn[:max_length]


def batch_tensors(batch):
    """Token ids, attention mask and labels (-100 where nothing is learned) of encoded
    conversations, padded on the right to the longest."""
    t = max(len(ids) for ids, _ in batch)
    input_ids = torch.zeros((len(batch), t), dtype=torch.long)
    mask = torch.zeros((len(batch), t), dtype=torch.long)
    labels = torch.full((len(batch), t), -100, dtype=torch.long)
    for r, (ids, learn) in enumerate(batch):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.tensor([x if f else -100 for x, f in zip(ids, learn)])
    return input_ids, mask, labels


def sft_loss(logits, labels):
    """Next-token cross-entropy on the learned tokens, summed and divided by their number."""
    shift, target = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(shift, target, ignore_index=-100, reduction="sum") / (target != -100).sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=float, default=None, help="instead of --steps")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--recompute", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", default=None, help="save the adapter (or, with --full, the model) here")
    ap.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    folder, name = os.path.split(os.path.abspath(a.gguf))
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    load_s = time.time() - t0
    if a.recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if not a.full:
        model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    model.train()
    rows = [json.loads(l) for l in open(a.train, encoding="utf-8") if l.strip()]
    data = [encode(tok, conversation(r), a.max_length) for r in rows]
    data = [(i, l) for i, l in data if any(l[1:])]
    g = torch.Generator().manual_seed(a.seed)
    steps = a.steps if a.epochs is None else int(a.epochs * ((len(data) + a.batch_size - 1) // a.batch_size))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warmup = int(a.warmup_ratio * steps + 0.999999)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    order, losses, times, tokens = [], [], [], []
    for step in range(steps):
        if len(order) < a.batch_size:
            order += torch.randperm(len(data), generator=g).tolist()
        batch = [data[i] for i in order[: a.batch_size]]
        order = order[a.batch_size:]
        input_ids, mask, labels = batch_tensors(batch)
        start = time.time()
        loss = sft_loss(model(input_ids=input_ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.time() - start)
        tokens.append(int(mask.sum()))
        losses.append(loss.item())
    if a.output:
        model.save_pretrained(a.output)
    timed = slice(1, None) if steps > 1 else slice(None)
    print(json.dumps({
        "tool": f"torch {torch.__version__}" + ("" if a.full else " + peft"), "full": a.full, "steps": steps, "batch_size": a.batch_size, "recompute": a.recompute,
        "tokens_per_s": sum(tokens[timed]) / sum(times[timed]), "seconds_per_step": sum(times[timed]) / len(times[timed]),
        "train_seconds": sum(times), "load_seconds": load_s, "first_loss": losses[0], "last_loss": losses[-1],
        "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": a.threads,
    }))


if __name__ == "__main__":
    main()
