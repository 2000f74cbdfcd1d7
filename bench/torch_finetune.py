"""PyTorch + transformers reference for zhiku's quality numbers: the same recipe as `zhiku train`.

BertForSequenceClassification on a local model folder; AdamW (decoupled weight decay, none on
biases and LayerNorm), linear schedule with warm-up, gradient clipping at 1.0, dynamic padding,
seeded shuffling, dev evaluation every epoch keeping the best macro-F1, test scored once with
the best weights. Prints one JSON object.

    python bench/torch_finetune.py --model .cache/models/m3e-small --data ../shared/datasets/thucnews-10k \
        --epochs 2 --batch-size 32 --lr 1e-4 --max-length 48
"""
import argparse
import copy
import json
import math
import random
import time

import torch
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup


def read(path, text_col, label_col):
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    return [r[text_col] for r in rows], [str(r[label_col]) for r in rows]


def macro_f1(gold, pred, k):
    f1s = []
    for c in range(k):
        tp = sum(1 for g, p in zip(gold, pred) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred) if g == c and p != c)
        if tp + fp + fn == 0:
            continue
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s)


def evaluate(model, tok, texts, labels, max_len, bs=64):
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pred = [0] * len(texts)
    with torch.no_grad():
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            for j, p in zip(idx, model(**enc).logits.argmax(-1).tolist()):
                pred[j] = p
    acc = sum(int(p == g) for p, g in zip(pred, labels)) / len(labels)
    return {"accuracy": acc, "macro_f1": macro_f1(labels, pred, model.config.num_labels)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder with train/dev/test.jsonl")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    tr_x, tr_y = read(f"{a.data}/train.jsonl", a.text_column, a.label_column)
    dv_x, dv_y = read(f"{a.data}/dev.jsonl", a.text_column, a.label_column)
    te_x, te_y = read(f"{a.data}/test.jsonl", a.text_column, a.label_column)
    labels = sorted(set(tr_y))
    lid = {l: i for i, l in enumerate(labels)}
    tr_y, dv_y, te_y = [lid[y] for y in tr_y], [lid[y] for y in dv_y], [lid[y] for y in te_y]
    tok = AutoTokenizer.from_pretrained(a.model)
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=len(labels), attn_implementation="sdpa")
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr)
    steps_per_epoch = math.ceil(len(tr_x) / a.batch_size)
    total = steps_per_epoch * a.epochs
    sched = get_linear_schedule_with_warmup(opt, math.ceil(a.warmup_ratio * total), total)
    best, best_state, t0 = -1.0, None, time.time()
    history = []
    for epoch in range(a.epochs):
        model.train()
        order = list(range(len(tr_x)))
        random.Random(a.seed + epoch).shuffle(order)
        for i in range(0, len(order), a.batch_size):
            idx = order[i:i + a.batch_size]
            enc = tok([tr_x[j] for j in idx], padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
            out = model(**enc, labels=torch.tensor([tr_y[j] for j in idx]))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        dev = evaluate(model, tok, dv_x, dv_y, a.max_length)
        history.append(dev)
        if dev["macro_f1"] > best:
            best, best_state = dev["macro_f1"], copy.deepcopy(model.state_dict())
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    test = evaluate(model, tok, te_x, te_y, a.max_length)
    print(json.dumps({"engine": f"pytorch {torch.__version__}", "test": test, "dev_history": history,
                      "train_seconds": train_s, "seconds_per_step": train_s / total, "steps": total}))


if __name__ == "__main__":
    main()
