"""RapidOCR (rapidocr-onnxruntime 1.4.4, onnxruntime) over image files, as the reference for
`zhiku ocr`: prints one JSON line per image, {"file", "text", "lines": [{"text", "box",
"confidence"}], "seconds"}, with the same models and settings RapidOCR ships.

    python bench/ocr_rapidocr.py [--threads 2] [--repeat 1] IMAGE...
"""
import argparse
import json
import time

from rapidocr_onnxruntime import RapidOCR


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="runs per image; the fastest is reported")
    args = ap.parse_args()
    engine = RapidOCR(intra_op_num_threads=args.threads, inter_op_num_threads=1)
    engine(args.images[0])  # warm-up: onnxruntime plans its kernels on the first run
    for path in args.images:
        best = None
        for _ in range(args.repeat):
            t = time.perf_counter()
            result, _ = engine(path)
            s = time.perf_counter() - t
            best = s if best is None else min(best, s)
        lines = [
            {"text": text, "box": [[int(x), int(y)] for x, y in box], "confidence": float(score)}
            for box, text, score in (result or [])
        ]
        print(json.dumps({"file": path, "text": "\n".join(l["text"] for l in lines), "lines": lines, "seconds": best}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
