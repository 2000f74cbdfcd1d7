"""llama.cpp's speed on a GGUF model, for `zhiku bench --generate --reference`.

Prompt processing: one prompt of --prompt-tokens tokens (median of --reps, after a warm-up).
Decoding at batch 1: --decode-tokens greedy tokens after a 16-token prompt, one `eval` each.
Prints one JSON object: prefill_tokens_per_s, decode_tokens_per_s, threads.

Run: python bench/llama_cpp_bench.py MODEL.gguf [--threads 2]  (llama-cpp-python, built from its
source package by bench/generate.sh)
"""
import argparse, json, os, statistics, time
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--prompt-tokens", type=int, default=512)
ap.add_argument("--decode-tokens", type=int, default=32)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--no-extra-bufts", action="store_true",
                help="turn off llama.cpp's extra weight buffers (AMX and repacked layouts): its AMX code faults on CPUs or VMs where AMX is not enabled")
ap.add_argument("--no-mmap", action="store_true", help="read the weights into memory instead of mapping the file")
a = ap.parse_args()
if a.no_extra_bufts:
    import llama_cpp
    from llama_cpp import llama as _llama
    _defaults = llama_cpp.llama_model_default_params
    def _params():
        p = _defaults()
        p.use_extra_bufts = False
        return p
    _llama.llama_cpp.llama_model_default_params = _params

llm = Llama(model_path=a.model, n_ctx=a.prompt_tokens + a.decode_tokens + 64, n_threads=a.threads, n_threads_batch=a.threads,
            n_batch=512, n_ubatch=512, use_mmap=not a.no_mmap, verbose=False)
base = llm.tokenize("Knowledge platforms publish courses, articles and audiobooks. 知识平台发布课程、文章和有声书。 ".encode(), add_bos=False)
prompt = (base * (a.prompt_tokens // len(base) + 1))[: a.prompt_tokens]
times = []
for r in range(a.reps + 1):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    if r > 0:
        times.append(time.perf_counter() - t)
prefill = a.prompt_tokens / statistics.median(times)

llm.reset()
llm.eval(prompt[:16])
tok = int(max(range(llm.n_vocab()), key=lambda i: llm.scores[llm.n_tokens - 1, i]))
t = time.perf_counter()
for _ in range(a.decode_tokens):
    llm.eval([tok])
    row = llm.scores[llm.n_tokens - 1]
    tok = int(row.argmax())
decode = a.decode_tokens / (time.perf_counter() - t)
print(json.dumps({"engine": "llama.cpp (llama-cpp-python 0.3.36)", "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                  "threads": a.threads, "extra_bufts": not a.no_extra_bufts}))
