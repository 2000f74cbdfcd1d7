#!/usr/bin/env bash
# Generation speed against llama.cpp in the same run: builds llama-cpp-python from its PyPI
# source package (bench/llama_venv.sh: about 12 min on 2 cores, once, into bench/.llama-venv), then runs
# `zhiku bench --generate` with llama.cpp as the reference on each model.
#   MODELS="path/a.gguf path/b.gguf" bench/generate.sh     (default: the Qwen2.5-0.5B Q4_K_M file)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=bench/.llama-venv
bench/llama_venv.sh
./scripts/fetch-llms.sh >/dev/null
cargo build --release -q -p zhiku-cli
models="${MODELS:-.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
for m in $models; do
  ./target/release/zhiku bench --generate "$m" --reference "$venv/bin/python bench/llama_cpp_bench.py $m --threads $(nproc)"
done
