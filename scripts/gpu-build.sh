#!/usr/bin/env bash
# Builds the `cuda` feature on a machine without a GPU or a system CUDA toolkit, and packs what
# scripts/gpu-check.sh needs into .gpu/ (git-ignored through .git/info/exclude) for a lent GPU
# machine: the stripped binary (xz), all-MiniLM-L6-v2 with fp16 weights (to fit the 64 MiB a
# device call carries; loaded into f32 masters) and BBC News.
#
#   PYTHON=/path/to/python ./scripts/gpu-build.sh      (about 15 min on 2 cores, mostly nvcc)
#
# The toolkit comes from NVIDIA's PyPI wheels (nvcc, nvvm, headers, cuBLAS, cuRAND) into
# .cache/cuda-$CUDA_VERSION. Its version must not be newer than the target's driver: PTX from a
# newer nvcc does not load on an older driver (the lent H200s run driver 580 = CUDA 13.0).
# libcuda.so is the driver itself and no wheel carries it; linking uses a stub with the real
# soname (libcuda.so.1, as CUDA's own lib64/stubs does), so the binary loads the machine's
# driver at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
CUDA_VERSION="${CUDA_VERSION:-13.0}"
CAP="${CUDA_COMPUTE_CAP:-90}"   # 90: Hopper (H100, H200)
tk="$PWD/.cache/cuda-$CUDA_VERSION"
cu="$tk/nvidia/cu${CUDA_VERSION%%.*}"
if [ ! -x "$cu/bin/nvcc" ]; then
  echo "fetching the CUDA $CUDA_VERSION toolkit wheels into $tk" >&2
  "$PY" -m pip install -q --target "$tk" "nvidia-cuda-nvcc==$CUDA_VERSION.*" "nvidia-nvvm==$CUDA_VERSION.*" \
    "nvidia-cuda-runtime==$CUDA_VERSION.*" "nvidia-cuda-crt==$CUDA_VERSION.*" "nvidia-cuda-cccl==$CUDA_VERSION.*" "nvidia-cublas==$CUDA_VERSION.*" \
    "nvidia-curand" "nvidia-cuda-nvrtc==$CUDA_VERSION.*"
fi
for f in "$cu"/lib/lib*.so.*; do  # the linker looks for the unversioned names
  base="${f%%.so.*}.so"; [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
done
stub="$tk/stub"
if [ ! -f "$stub/libcuda.so" ]; then
  mkdir -p "$stub"
  # Every cu* driver entry point named in cuda.h, each returning CUDA_ERROR_NO_DEVICE (100).
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$cu/include/cuda.h" | sort -u | awk '{print "int " $1 "(void) { return 100; }"}' > "$stub/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
fi
# cudarc reads the version from CUDARC_CUDA_VERSION (13.0 -> 13000). The kernels' build cache
# does not notice a different nvcc, so each toolkit version builds in its own target folder.
major="${CUDA_VERSION%%.*}" minor="${CUDA_VERSION#*.}"
export CUDA_HOME="$cu" PATH="$cu/bin:$PATH" CUDA_COMPUTE_CAP="$CAP" LIBRARY_PATH="$cu/lib:$stub" CUDARC_CUDA_VERSION="${major}0${minor}0"
target="target/cuda-$CUDA_VERSION-sm$CAP"
cargo build --release --locked --features cuda -p zhiku-cli --target-dir "$target"
if grep -h "Cuda compilation tools" "$target"/release/build/candle-kernels-*/out/*.ptx | grep -vq "release $CUDA_VERSION,"; then
  echo "the kernels' PTX was not made by nvcc $CUDA_VERSION" >&2; exit 1
fi
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
strip -o .gpu/zhiku "$target/release/zhiku"
xz -T0 -6 -f .gpu/zhiku
./scripts/fetch-models.sh >/dev/null
"$PY" - .cache/models/all-MiniLM-L6-v2 .gpu/minilm <<'PY'
import os, shutil, sys
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1:]
os.makedirs(dst, exist_ok=True)
for f in ("config.json", "tokenizer.json", "vocab.txt"):
    shutil.copy(os.path.join(src, f), dst)
w = {k: (v.astype("float16") if v.dtype.kind == "f" else v) for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
save_file(w, os.path.join(dst, "model.safetensors"))
PY
data=../shared/datasets/bbc-news
mkdir -p .gpu/bbc
for s in train dev test; do xz -c "$data/$s.jsonl" > ".gpu/bbc/$s.jsonl.xz"; done
du -sh .gpu/* >&2
echo "ready: run scripts/gpu-check.sh on the device with carry [\".gpu\"]" >&2
