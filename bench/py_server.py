"""The Python server a platform would run instead of `zhiku serve`: FastAPI + uvicorn +
transformers, the same classifier folder, the same request and response shape as zhiku's
POST /v1/classify. Used by bench/load.sh as the reference.

    python bench/py_server.py --model runs/quality-bbc --port 8091
"""
import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class ClassifyRequest(BaseModel):
    texts: list[str]
    top_k: int = 1
    model: str | None = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8091)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--max-length", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model).eval()
    labels = model.config.id2label
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    # A plain `def` endpoint: FastAPI runs it on its thread pool, so concurrent requests run
    # concurrently, as in a typical deployment.
    @app.post("/v1/classify")
    def classify(req: ClassifyRequest):
        with torch.inference_mode():
            enc = tok(req.texts, padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)
        top = probs.topk(min(max(req.top_k, 1), probs.shape[1]), dim=-1)
        results = []
        for values, indices in zip(top.values.tolist(), top.indices.tolist()):
            results.append({"labels": [labels[indices[0]]],
                            "scores": [{"label": labels[i], "score": s} for s, i in zip(values, indices)]})
        return {"results": results}

    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
