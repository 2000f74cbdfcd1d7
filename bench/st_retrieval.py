"""The zhiku retrieval recipe in sentence-transformers, on the same pairs (and the same mined
hard negatives) that `zhiku train --task retrieval` wrote to OUTPUT/splits/train.jsonl:
MultipleNegativesRankingLoss (scale 20), no duplicate texts in a batch, AdamW with linear
warm-up and decay, gradient clipping at 1. Saves the model for `zhiku eval --task retrieval`.
    python bench/st_retrieval.py BASE_MODEL SPLITS/train.jsonl OUT --batch 32 --epochs 1 --lr 2e-5 --max-length 64
"""
import argparse
import json
import time

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses
from sentence_transformers.training_args import BatchSamplers

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("train")
ap.add_argument("out")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--lr", type=float, default=2e-5)
ap.add_argument("--max-length", type=int, default=64)
ap.add_argument("--weight-decay", type=float, default=0.01)
ap.add_argument("--warmup-ratio", type=float, default=0.1)
ap.add_argument("--scale", type=float, default=20.0)
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)

rows = [json.loads(l) for l in open(a.train, encoding="utf-8") if l.strip()]
negatives = min(len(r.get("negatives", [])) for r in rows)
cols = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}
for i in range(negatives):
    cols[f"negative_{i + 1}"] = [r["negatives"][i] for r in rows]
train = Dataset.from_dict(cols)

model = SentenceTransformer(a.base, device="cpu")
model.max_seq_length = a.max_length
loss = losses.MultipleNegativesRankingLoss(model, scale=a.scale)
args = SentenceTransformerTrainingArguments(
    output_dir=a.out + ".trainer",
    num_train_epochs=a.epochs,
    per_device_train_batch_size=a.batch,
    learning_rate=a.lr,
    weight_decay=a.weight_decay,
    warmup_ratio=a.warmup_ratio,
    lr_scheduler_type="linear",
    max_grad_norm=1.0,
    batch_sampler=BatchSamplers.NO_DUPLICATES,
    seed=a.seed,
    save_strategy="no",
    logging_steps=10,
    report_to=[],
    dataloader_drop_last=False,
    use_cpu=True,
)
start = time.time()
SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss).train()
seconds = time.time() - start
model.save(a.out)
print(json.dumps({"seconds": seconds, "pairs": len(rows), "negatives_per_pair": negatives, "steps_per_epoch": -(-len(rows) // a.batch)}))
