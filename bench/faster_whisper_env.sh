# Sourced by the speech benchmarks (bench/transcribe.sh, bench/speech_set.sh) from the repository
# root: the faster-whisper venv (made once, in .cache/venvs), the Whisper models, and the
# release binary; sets $venv and $Z (the zhiku binary, $ZHIKU to use a copy).
venv=.cache/venvs/faster-whisper
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import faster_whisper, opencc" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q faster-whisper==1.2.1 opencc-python-reimplemented==0.1.7
fi
./scripts/fetch-models.sh >/dev/null
cargo build --release -q -p zhiku-cli
Z="$(pwd)/${ZHIKU:-target/release/zhiku}"
