#!/usr/bin/env bash
# English speech sets (bench/speech_set.py), zhiku against faster-whisper (beam 5, f32, no VAD)
# on Whisper base and tiny.en, in one run:
#   SET=espeak (default): 60 news subtitles spoken by espeak-ng; writes bench/results/speech-set-MODEL.json
#   SET=real: the 13 recordings of people with transcripts that the package index carries
#             (LibriVox, spoken commands, jfk.wav...); writes bench/results/speech-real-MODEL.json
# and prints the word error rates.
#   bench/speech_set.sh        (SET=espeak MODELS="whisper-base whisper-tiny.en" COUNT=60)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${MODELS:-whisper-base whisper-tiny.en}"
SET="${SET:-espeak}"
case "$SET" in
  espeak) work=.cache/bench/speech-set; result=speech-set ;;
  real) work=.cache/bench/speech-real; result=speech-real ;;
  *) echo "SET is espeak or real" >&2; exit 1 ;;
esac
mkdir -p "$work" bench/results
[ "$SET" = real ] || command -v espeak-ng >/dev/null || { apt-get install -y -q espeak-ng >/dev/null || sudo apt-get install -y -q espeak-ng >/dev/null; }
. bench/faster_whisper_env.sh
for m in $MODELS; do
  OMP_NUM_THREADS=2 "$venv/bin/python" bench/speech_set.py "$Z" ".cache/models/$m" "$work/audio" "$work/$m.json" --set "$SET" --count "${COUNT:-60}"
  python3 - "$work/$m.json" "bench/results/$result-$m.json" "$SET" <<'PY'
import datetime, json, os, sys
d = json.load(open(sys.argv[1]))
d["date"] = datetime.date.today().isoformat()
d["command"] = "bench/speech_set.sh" if sys.argv[3] == "espeak" else "SET=real bench/speech_set.sh"
json.dump(d, open(sys.argv[2] + ".tmp", "w"), ensure_ascii=False, indent=1)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
w, s = d["wer"], d["seconds"]
print(f"{os.path.basename(d['model'])}: {d['files']} files, {d['reference_words']} words, {d['audio_seconds']:.0f} s of speech")
print(f"  WER zhiku {w['zhiku']:.4f}, faster-whisper {w['faster-whisper']:.4f}; identical text on {d['identical_text']}/{d['files']} files")
print(f"  time zhiku {s['zhiku']:.1f} s, faster-whisper {s['faster-whisper']:.1f} s (speed x {s['faster-whisper'] / s['zhiku']:.2f})")
PY
done
