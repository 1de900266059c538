#!/usr/bin/env bash
# GPU performance run (after bench/build_random_models.py wrote /tmp/rand): our server on vLLM with
# CUDA graphs, swept by bench/load.py; then the in-process baselines. Usage, on the lent H200 after
# `. .devcarry/p2/vllm_env.sh`:  bash bench/gpu_load.sh load|realtime|baselines|profile  (writes under $OUT). Knobs:
# MODE, CONC (bursts; CONC= skips them), SERVE_ARGS (extra serve flags, e.g. "--tts-quantization fp8
# --tts-kv-cache-dtype fp8"), TTS_MEM, LLM_MEM, MAX_SEQS (--tts-max-num-seqs and --max-concurrent-streams, 256),
# LOAD_ARGS, MODES; ENGINE_ARGS (baselines/profile, e.g. "--quantization fp8 --kv-cache-dtype fp8");
# PYSPY_S (load: sample the server process with py-spy for that many seconds, PYSPY_DELAY s after it is ready).
# realtime: the server with speech recognition (ASR_MODEL, default the tiny random-weight demo Whisper built
# under $RAND/whisper) and bench/realtime_load.py: SESSIONS (levels of concurrent voice sessions, 1,8,32), TURNS (2),
# RT_ARGS (extra realtime_load.py flags, e.g. "--no-barge-in").
# load, capacity search: SEARCH=1 (SEARCH_START 8, SEARCH_MAX 512, SEARCH_RES 16: bursts up a x2 ladder, then
# bisect); Poisson sweep: RATES="8,16,24" (requests/s, ARR_S s each, 60); overload: OVERLOAD=C (offer
# OVERLOAD_X=1.5 x C as OVERLOAD_ARRIVALS=poisson|burst for ARR_S s). TTFA p95 limits: TTFA_MS (speech, 500),
# CHAT_TTFA_MS (800).
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
      --llm-gpu-memory-utilization "${LLM_MEM:-0.25}" --tts-max-num-seqs "${MAX_SEQS:-256}" \
      --max-concurrent-streams "${MAX_SEQS:-256}" --port 8080 ${SERVE_ARGS:-} > "$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    if [ -n "${PYSPY_S:-}" ]; then
      ( until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health/ready')" 2>/dev/null; do sleep 1; done
        sleep "${PYSPY_DELAY:-5}"
        "${PYSPY:-py-spy}" record -p "$SERVER_PID" -d "$PYSPY_S" -r 100 -f raw --threads -o "$OUT/pyspy.txt" --nonblocking > "$OUT/pyspy.log" 2>&1 ) &
    fi
    PHASES=()
    [ -n "${SEARCH:-}" ] && PHASES+=(--search --search-start "${SEARCH_START:-8}" --search-max "${SEARCH_MAX:-512}" \
      --search-resolution "${SEARCH_RES:-16}")
    [ -n "${RATES:-}" ] && PHASES+=(--arrival-rates "$RATES" --arrival-duration-s "${ARR_S:-60}")
    [ -n "${OVERLOAD:-}" ] && PHASES+=(--overload "$OVERLOAD" --overload-factor "${OVERLOAD_X:-1.5}" \
      --overload-arrivals "${OVERLOAD_ARRIVALS:-poisson}" --overload-duration-s "${ARR_S:-60}")
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/load.py --url http://127.0.0.1:8080 --mode "${MODE:-both}" \
      --concurrency "${CONC-1,8,32,64,128}" --ttfa-p95-ms "${TTFA_MS:-500}" --chat-ttfa-p95-ms "${CHAT_TTFA_MS:-800}" \
      --server-timeout 330 --out "$OUT/load" ${PHASES[@]+"${PHASES[@]}"} ${LOAD_ARGS:-} 2>&1 | tail -60
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv
    ;;
  realtime)  # N concurrent Realtime voice sessions (speech in at real-time pace; voice-to-voice, barge-in)
    ASR="${ASR_MODEL:-$(python3 -c "from pathlib import Path; from oai_server.engines.demo_whisper import \
      build_demo_whisper as b; print(b(Path('$RAND/whisper')))")}"
    python3 -m oai_server serve --engine vllm --llm-model-name "$RAND/gemma" --tts-model-name "$RAND/orpheus" \
      --snac-model-name "$RAND/snac" --asr-model-name "$ASR" --tts-gpu-memory-utilization "${TTS_MEM:-0.5}" \
      --llm-gpu-memory-utilization "${LLM_MEM:-0.25}" --asr-gpu-memory-utilization "${ASR_MEM:-0.1}" \
      --tts-max-num-seqs "${MAX_SEQS:-256}" --max-concurrent-streams "${MAX_SEQS:-256}" --realtime-seed 7 \
      --port 8080 ${SERVE_ARGS:-} > "$OUT/server.log" 2>&1 &
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/realtime_load.py --url http://127.0.0.1:8080 --server-timeout 330 \
      --sessions "${SESSIONS:-1,8,32}" --turns "${TURNS:-2}" --out "$OUT/realtime" ${RT_ARGS:-} 2>&1 | tail -30
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
