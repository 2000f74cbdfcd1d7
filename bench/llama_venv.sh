#!/usr/bin/env bash
# Builds llama-cpp-python from its PyPI source package into bench/.llama-venv (about 12 min on
# 2 cores, once; later runs return at once). Used by bench/generate.sh and
# scripts/check_merge_llama_cpp.py's callers.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=bench/.llama-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q scikit-build-core cmake ninja numpy typing_extensions diskcache jinja2
  tmp="$(mktemp -d)"
  # --no-build-isolation: otherwise pip compiles cmake from source just to read the metadata.
  "$venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmp" llama-cpp-python==0.3.36
  # The CPU's features, but AMX off: llama.cpp's AMX tile code faults where the kernel or the
  # VM has not enabled AMX (GGML_NATIVE would turn it on from -march=native).
  has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
  flags="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)"
  flags="$flags -DGGML_BMI2=$(has bmi2) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)"
  flags="$flags -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX_VNNI=$(has avx_vnni)"
  flags="$flags -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" install -q --no-build-isolation "$tmp"/llama_cpp_python-*.tar.gz
  rm -rf "$tmp"
fi
