#!/usr/bin/env bash
# GPU performance run (after bench/build_random_models.py wrote /tmp/rand): our server on vLLM with
# CUDA graphs, swept by bench/load.py; then the in-process baselines. Usage, on the lent H100 after
# `. .devcarry/p2/vllm_env.sh`:  bash bench/gpu_load.sh load|baselines|profile  (writes under $OUT). Knobs:
# MODE, CONC, SERVE_ARGS (extra serve flags, e.g. "--tts-quantization fp8 --tts-kv-cache-dtype fp8"), TTS_MEM,
# LLM_MEM, LOAD_ARGS, MODES; ENGINE_ARGS (baselines/profile, e.g. "--quantization fp8 --kv-cache-dtype fp8");
# PYSPY_S (load: sample the server process with py-spy for that many seconds, PYSPY_DELAY s after it is ready).
set -u
OUT=${OUT:-/tmp/out}; RAND=${RAND:-/tmp/rand}
cleanup() { pkill -9 -f "[E]ngineCore" ; pkill -9 -f "[o]ai_server serve" ; sleep 2; }
cleanup
mkdir -p "$OUT"
python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from _common import ensure_snac; ensure_snac(Path('$RAND/snac'))"
case "${1:-load}" in
  load)
    python3 -m oai_server serve --engine vllm --llm-model-name "$RAND/gemma" --tts-model-name "$RAND/orpheus" \
      --snac-model-name "$RAND/snac" --tts-gpu-memory-utilization "${TTS_MEM:-0.55}" \
      --llm-gpu-memory-utilization "${LLM_MEM:-0.25}" --tts-max-num-seqs 256 --port 8080 ${SERVE_ARGS:-} > "$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    if [ -n "${PYSPY_S:-}" ]; then
      ( until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health/ready')" 2>/dev/null; do sleep 1; done
        sleep "${PYSPY_DELAY:-5}"
        "${PYSPY:-py-spy}" record -p "$SERVER_PID" -d "$PYSPY_S" -r 100 -f raw --threads -o "$OUT/pyspy.txt" --nonblocking > "$OUT/pyspy.log" 2>&1 ) &
    fi
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/load.py --url http://127.0.0.1:8080 --mode "${MODE:-both}" \
      --concurrency "${CONC:-1,8,32,64,128}" --server-timeout 330 --out "$OUT/load" ${LOAD_ARGS:-} 2>&1 | tail -60
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv
    ;;
  baselines)
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/baselines.py --engine vllm --tts-model "$RAND/orpheus" \
      --snac "$RAND/snac" --concurrency "${CONC:-1,8,32,64}" --max-tokens 1024 --modes "${MODES:-raw,seed,ours}" \
      --out "$OUT/baselines.json" ${ENGINE_ARGS:-} 2>&1 | tail -60
    ;;
  profile)  # one engine, N streams, a torch-profiler trace of a few decode steps (bench/profile_engine.py)
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/profile_engine.py --tts-model "$RAND/orpheus" \
      --concurrency "${CONC:-128}" --out "$OUT/profile" ${ENGINE_ARGS:-} > "$OUT/profile.log" 2>&1
    grep "^unprofiled" "$OUT/profile.log"; sed -n '/^=== profile summary/,$p' "$OUT/profile.log" | head -70
    tail -5 "$OUT/profile.log"
    ;;
esac
cleanup
