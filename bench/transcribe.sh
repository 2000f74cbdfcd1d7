#!/usr/bin/env bash
# Speech to text against faster-whisper (issue 16): bench/transcribe.py in a venv of its own,
# Whisper base (multilingual) and tiny.en, f32 and int8, greedy and 5 beams on both sides (no VAD), in one run.
# Writes bench/results/transcribe-MODEL.json and prints the table.
#   bench/transcribe.sh                 (MODELS="whisper-base whisper-tiny.en" REPEATS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${MODELS:-whisper-base whisper-tiny.en}"
work=.cache/bench/transcribe
mkdir -p "$work" bench/results
. bench/faster_whisper_env.sh
./scripts/fetch-media.sh >/dev/null
for m in $MODELS; do
  OMP_NUM_THREADS=2 "$venv/bin/python" bench/transcribe.py "$Z" ".cache/models/$m" .cache/media "$work/$m.json" --repeats "${REPEATS:-3}"
  python3 - "$work/$m.json" "bench/results/transcribe-$m.json" <<'PY'
import datetime, json, os, sys
d = json.load(open(sys.argv[1]))
d["date"] = datetime.date.today().isoformat()
d["command"] = "bench/transcribe.sh"
json.dump(d, open(sys.argv[2] + ".tmp", "w"), ensure_ascii=False, indent=1)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
print(f"\n{os.path.basename(d['model'])} (2 threads)")
print(f"{'file':18} {'compute':8} {'beam':>4} | {'zhiku s':>8} {'RTF':>6} {'err':>6} | {'f-w s':>8} {'RTF':>6} {'err':>6} | {'speed x':>7}")
by = {(r["tool"], r["compute"], r.get("beam", 1), r["file"]): r for r in d["rows"]}
for (tool, compute, beam, f), z in by.items():
    if tool != "zhiku":
        continue
    w = by[("faster-whisper", compute, beam, f)]
    print(f"{f:18} {compute:8} {beam:4} | {z['seconds']:8.3f} {z['rtf']:6.3f} {z['error_rate']:6.3f} | {w['seconds']:8.3f} {w['rtf']:6.3f} {w['error_rate']:6.3f} | {w['seconds'] / z['seconds']:6.2f}x")
print("err: word error rate (English) or character error rate (Chinese) against the transcript; speed x: faster-whisper's time / zhiku's")
PY
done
