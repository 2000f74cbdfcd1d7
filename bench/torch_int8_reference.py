"""PyTorch dynamic int8 (quantize_dynamic on nn.Linear) against fp32 for a classifier folder: BBC test
accuracy and 32x128 inference speed, as the reference for zhiku's int8 work.
    python bench/torch_int8_reference.py [CLASSIFIER_DIR]     (default runs/quality-bbc)
"""
import sys, time, json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
torch.set_num_threads(2)
d = sys.argv[1] if len(sys.argv) > 1 else "runs/quality-bbc"
tok = AutoTokenizer.from_pretrained(d); m = AutoModelForSequenceClassification.from_pretrained(d).eval()
q = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
rows = [json.loads(l) for l in open("../shared/datasets/bbc-news/test.jsonl")]
texts = [r["text"] for r in rows]; gold = [r["label"] for r in rows]
def acc(model):
    ok = 0
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i:i+32], padding=True, truncation=True, max_length=128, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).tolist()
            ok += sum(model.config.id2label[p] == g for p, g in zip(pred, gold[i:i+32]))
    return ok / len(texts)
def speed(model):
    x = tok(["word " * 200] * 32, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        model(**x); t = time.time()
        for _ in range(3): model(**x)
    return 3 * 32 / (time.time() - t)
for name, model in (("fp32", m), ("int8 dynamic", q)):
    print(name, "acc %.4f" % acc(model), "seq/s %.1f" % speed(model))
