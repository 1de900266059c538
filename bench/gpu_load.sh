#!/usr/bin/env bash
# GPU performance run (after bench/build_random_models.py wrote /tmp/rand): our server on vLLM with
# CUDA graphs, swept by bench/load.py; then the in-process baselines. Usage, on the lent H200 after
# `. .devcarry/p2/vllm_env.sh`:  bash bench/gpu_load.sh load|asr|realtime|baselines|profile  (writes under $OUT). Knobs:
# ASR_ON=1 (load, placement: the server also runs the Whisper-large-v3-turbo-shaped random model from
# $RAND/whisper, ASR_MEM of the GPU when set; default --no-asr); asr: bench/asr_load.py against a server with
# it (ASR_CONC latency levels "1,32", SPEECH_N speech streams 64, TRANSCRIBERS 32, ASR_LOAD_ARGS);
# realtime: bench/realtime_load.py against a server with it (SESSIONS concurrent voice sessions per level
# "1,8,32", TURNS answered turns each 2, RT_ARGS, e.g. "--no-barge-in"; replies seeded);
# MODE, CONC (bursts; CONC= skips them), SERVE_ARGS (extra serve flags, e.g. "--tts-quantization fp8
# --tts-kv-cache-dtype fp8"), TTS_MEM, LLM_MEM, MAX_SEQS (--tts-max-num-seqs and --max-concurrent-streams, 256),
# LOAD_ARGS, MODES; ENGINE_ARGS (baselines/profile, e.g. "--quantization fp8 --kv-cache-dtype fp8");
# PYSPY_S (load: sample the server process with py-spy for that many seconds, PYSPY_DELAY s after it is ready).
# load, capacity search: SEARCH=1 (SEARCH_START 8, SEARCH_MAX 512, SEARCH_RES 16: bursts up a x2 ladder, then
# bisect); Poisson sweep: RATES="8,16,24" (requests/s, ARR_S s each, 60); overload: OVERLOAD=C (offer
# OVERLOAD_X=1.5 x C as OVERLOAD_ARRIVALS=poisson|burst for ARR_S s). TTFA p95 limits: TTFA_MS (speech, 500),
# CHAT_TTFA_MS (800).
# placement: one GPU layout on CARDS cards (the first CARDS visible; default all) in one call, see the
# `placement)` branch below for its knobs; results under $OUT named h200x<CARDS>_<PLACEMENT>_<phase>.
set -u
OUT=${OUT:-/tmp/out}; RAND=${RAND:-/tmp/rand}
cleanup() { [ -n "${NO_CLEANUP:-}" ] && return; pkill -9 -f "[E]ngineCore" ; pkill -9 -f "[o]ai_server serve" ; sleep 2; }
listen_drops() {  # the kernel's count of connections refused by full listen queues (TcpExt ListenOverflows, ListenDrops)
  awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else print "ListenOverflows", $n["ListenOverflows"], "ListenDrops", $n["ListenDrops"] }' /proc/net/netstat
}
# SOMAXCONN=N raises the kernel's cap on every listen queue (net.core.somaxconn) before the server listens: the
# server asks for 2048, the kernel gives min(2048, somaxconn); a burst past it loses SYNs and waits 1 s for TCP's retry.
echo "net.core.somaxconn $(cat /proc/sys/net/core/somaxconn); $(listen_drops)"
if [ -n "${SOMAXCONN:-}" ]; then echo "$SOMAXCONN" > /proc/sys/net/core/somaxconn && echo "net.core.somaxconn now $SOMAXCONN"; fi
[ "${1:-load}" = placement ] || cleanup
mkdir -p "$OUT"
python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from _common import ensure_snac; ensure_snac(Path('$RAND/snac'))"
# Speech recognition: off unless asked (the load sends no audio in); on with ASR_ON=1 and always in `asr` mode, with
# the Whisper-large-v3-turbo-shaped random model from $RAND/whisper (built here if missing).
ASR_FLAGS=(--no-asr)
if [ -n "${ASR_ON:-}" ] || [ "${1:-load}" = asr ] || [ "${1:-load}" = realtime ]; then
  [ -f "$RAND/whisper/config.json" ] || python3 bench/build_random_models.py --out "$RAND" --which whisper
  ASR_FLAGS=(--asr --asr-model-name "$RAND/whisper")
  [ -n "${ASR_MEM:-}" ] && ASR_FLAGS+=(--asr-gpu-memory-utilization "$ASR_MEM")
fi
serve() {  # the server on vLLM in the background: SERVER_PID
  python3 -m oai_server serve --engine vllm --llm-model-name "$RAND/gemma" --tts-model-name "$RAND/orpheus" \
    --snac-model-name "$RAND/snac" --tts-gpu-memory-utilization "${TTS_MEM:-0.55}" \
    --llm-gpu-memory-utilization "${LLM_MEM:-0.25}" --tts-max-num-seqs "${MAX_SEQS:-256}" \
    --max-concurrent-streams "${MAX_SEQS:-256}" --port 8080 "${ASR_FLAGS[@]}" ${SERVE_ARGS:-} > "$OUT/server.log" 2>&1 &
  SERVER_PID=$!
}
case "${1:-load}" in
  asr)  # transcription latency/throughput, GPU memory per engine, and its cost to speech streams
    serve
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/asr_load.py --url http://127.0.0.1:8080 --out "$OUT/asr" \
      --server-pid "$SERVER_PID" --server-timeout 330 --concurrency "${ASR_CONC:-1,32}" \
      --speech-streams "${SPEECH_N:-64}" --transcribers "${TRANSCRIBERS:-32}" ${ASR_LOAD_ARGS:-} 2>&1 | tail -40
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv
    ;;
  realtime)  # N concurrent Realtime voice sessions: speech in at real-time pace, voice-to-voice, barge-in
    SERVE_ARGS="${SERVE_ARGS:-} --realtime-seed 7"
    serve
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/realtime_load.py --url http://127.0.0.1:8080 --server-timeout 330 \
      --sessions "${SESSIONS:-1,8,32}" --turns "${TURNS:-2}" --out "$OUT/realtime" ${RT_ARGS:-} 2>&1 | tail -30
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv
    ;;
  load)
    serve
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
  baselines)
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/baselines.py --engine vllm --tts-model "$RAND/orpheus" \
      --snac "$RAND/snac" --concurrency "${CONC:-1,8,32,64}" --max-tokens 1024 --modes "${MODES:-raw,seed,ours}" \
      --out "$OUT/baselines.json" ${ENGINE_ARGS:-} 2>&1 | tail -60
    ;;
  profile)  # one engine, N streams, a torch-profiler trace of a few decode steps (bench/profile_engine.py)
    timeout "${LOAD_TIMEOUT:-540}" python3 bench/profile_engine.py --tts-model "$RAND/orpheus" --snac "$RAND/snac" \
      --concurrency "${CONC:-128}" --out "$OUT/profile" ${PYSPY:+--py-spy "$PYSPY"} ${ENGINE_ARGS:-} > "$OUT/profile.log" 2>&1
    grep "^unprofiled" "$OUT/profile.log"; sed -n '/^=== profile summary/,$p' "$OUT/profile.log" | head -70
    tail -5 "$OUT/profile.log"
    ;;
  placement)
    # One layout, one call (< 10 min): start the server with --placement $PLACEMENT on the first CARDS cards
    # (setsid, so KEEP=1 leaves it running for the next call on the warm machine, which then reuses it),
    # then the phases in PHASES (default ttfa,speech,chat,mixed), each a bench/load.py run in
    # ${TAG}_<phase>/ (TAG=h200x${CARDS}_${PLACEMENT}), cut to what is left of BUDGET_S (540 s counted
    # from the start of this script; a phase with less than MIN_PHASE_S (60) left is skipped and said so).
    #   ttfa:   1 speech stream and 1 chat conversation, TTFA_REPEATS (3) times each, one after another
    #   speech: capacity search from SPEECH_START (64 x CARDS) up by GROWTH (1.5) to SPEECH_MAX (512), SPEECH_RES (32)
    #   chat:   the same, CHAT_START (24 x CARDS), CHAT_MAX (384), CHAT_RES (16), replies of CHAT_TOKENS (64) tokens
    #   mixed:  N speech streams + N chat conversations at once, MIXED_START (24 x CARDS), MIXED_MAX (256), MIXED_RES (16)
    #   burst:  one burst of BURST_N (288) speech streams. When the phase PROFILE_PHASE (burst) starts: with PYSPY_S, py-spy
    #           samples the server process (and its engine cores with PYSPY_SUB=1; C frames with PYSPY_NATIVE=1) for that many seconds from PYSPY_DELAY (4) s on (${TAG}_pyspy.txt, raw
    #           collapsed stacks, per thread); with TOP_S, `top -H` records the busiest threads' CPU share each second (${TAG}_top.txt)
    #           and the listening socket's accept queue every 10 ms (${TAG}_acceptq.txt: time, queued connections)
    # Server knobs: TTS_SEQS (--tts-max-num-seqs per Orpheus engine, 384), LLM_SEQS (256), MAX_STREAMS (admission,
    # 1024), TTS_MEM/LLM_MEM (only when set: else the layout computes the shares), ASR_ON=1 (the random Whisper;
    # default --no-asr: the load sends no audio in), SERVE_ARGS. Results stay in /tmp/oai-placement/results on the warm machine and
    # are all copied to $OUT by every call: the phase folders, ${TAG}_layout.txt (the layout block the server
    # logged), ${TAG}_summary.json (bench/placement_summary.py over every phase run so far), ${TAG}_server.log
    # and ${TAG}_gpu_memory.csv.
    T0=$(date +%s)
    CARDS=${CARDS:-$(nvidia-smi -L | wc -l)}; PLACEMENT=${PLACEMENT:-auto}; TAG=${TAG:-h200x${CARDS}_${PLACEMENT}}
    STATE=/tmp/oai-placement; mkdir -p "$STATE"
    export CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((CARDS - 1)))
    ready() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:${PORT:-8080}/health/ready', timeout=5)" 2>/dev/null; }
    stop_server() {
      [ -f "$STATE/pid" ] && kill -9 -- "-$(cat "$STATE/pid")" 2>/dev/null
      rm -f "$STATE/pid" "$STATE/tag"; cleanup
    }
    if [ "$(cat "$STATE/tag" 2>/dev/null)" = "$TAG" ] && ready; then
      echo "reusing the running $TAG server"
    else
      stop_server
      MEM=(); [ -n "${TTS_MEM:-}" ] && MEM+=(--tts-gpu-memory-utilization "$TTS_MEM")
      [ -n "${LLM_MEM:-}" ] && MEM+=(--llm-gpu-memory-utilization "$LLM_MEM")
      setsid python3 -m oai_server serve --engine "${ENGINE:-vllm}" --placement "$PLACEMENT" --llm-model-name "$RAND/gemma" \
        --tts-model-name "$RAND/orpheus" --snac-model-name "$RAND/snac" "${ASR_FLAGS[@]}" --tts-max-num-seqs "${TTS_SEQS:-384}" \
        --llm-max-num-seqs "${LLM_SEQS:-256}" --max-concurrent-streams "${MAX_STREAMS:-1024}" --max-queued 1024 \
        --port "${PORT:-8080}" ${MEM[@]+"${MEM[@]}"} ${SERVE_ARGS:-} > "$STATE/server.log" 2>&1 < /dev/null &
      echo $! > "$STATE/pid"; echo "$TAG" > "$STATE/tag"
      until ready; do
        if ! kill -0 "$(cat "$STATE/pid")" 2>/dev/null || [ $(( $(date +%s) - T0 )) -gt "${START_TIMEOUT:-420}" ]; then
          echo "server did not become ready"; tail -40 "$STATE/server.log"; cp "$STATE/server.log" "$OUT/${TAG}_server.log"
          stop_server; exit 1
        fi
        sleep 2
      done
      echo "server ready after $(( $(date +%s) - T0 )) s"
    fi
    RES="$STATE/results"; mkdir -p "$RES"  # kept on the warm machine: a later call's summary covers every phase
    sed -n "/GPU layout '/,/^[^ ]/p" "$STATE/server.log" | sed '$d' | sed 's/^.*\(GPU layout\)/\1/' | tee "$RES/${TAG}_layout.txt"
    phase_args() {
      case "$1" in
        ttfa) echo "--mode both --concurrency 1 --requests-per-stream ${TTFA_REPEATS:-3} --warmup 1" ;;
        speech) echo "--mode speech --search --search-start ${SPEECH_START:-$((64 * CARDS))} --search-max ${SPEECH_MAX:-512} --search-resolution ${SPEECH_RES:-32}" ;;
        chat) echo "--mode chat --search --search-start ${CHAT_START:-$((24 * CARDS))} --search-max ${CHAT_MAX:-384} --search-resolution ${CHAT_RES:-16}" ;;
        mixed) echo "--mode mixed --search --search-start ${MIXED_START:-$((24 * CARDS))} --search-max ${MIXED_MAX:-256} --search-resolution ${MIXED_RES:-16}" ;;
        burst) echo "--mode speech --concurrency ${BURST_N:-288}" ;;
      esac
    }
    profile() {  # py-spy on the server (its event loop and threads) and `top` of the host, PYSPY_DELAY s from now
      if [ -n "${PYSPY_S:-}" ]; then
        ( sleep "${PYSPY_DELAY:-4}"; "${PYSPY:-py-spy}" record -p "$(cat "$STATE/pid")" -d "$PYSPY_S" -r 100 -f raw --threads \
            ${PYSPY_SUB:+--subprocesses} ${PYSPY_NATIVE:+--native} --nonblocking -o "$RES/${TAG}_pyspy.txt" > "$RES/${TAG}_pyspy.log" 2>&1 ) &
        SPY_PID=$!
      fi
      if [ -n "${TOP_S:-}" ]; then
        ( sleep "${PYSPY_DELAY:-4}"; top -H -b -d 1 -n "$TOP_S" -w 200 -c | grep -A 40 '^top -' > "$RES/${TAG}_top.txt" 2>&1 ) &
        TOP_PID=$!
        # the listening socket's accept queue (connections the kernel holds for the server to accept), every 10 ms
        ( sleep "${PYSPY_DELAY:-4}"; python3 bench/burst_probe.py --port "${PORT:-8080}" --watch-queue-s "$TOP_S" \
            > "$RES/${TAG}_acceptq.txt" 2>&1 ) &
      fi
    }
    for phase in $(echo "${PHASES:-ttfa,speech,chat,mixed}" | tr , ' '); do
      left=$(( ${BUDGET_S:-540} - ($(date +%s) - T0) ))
      if [ "$left" -lt "${MIN_PHASE_S:-60}" ]; then echo "[$TAG] $phase skipped: ${left} s left of BUDGET_S"; continue; fi
      [ "$phase" = "${PROFILE_PHASE:-burst}" ] && profile  # the client processes spawn, then the burst goes out
      echo "== [$TAG] $phase ($left s left; $(listen_drops))"
      timeout "$left" python3 bench/load.py --url "http://127.0.0.1:${PORT:-8080}" --concurrency '' $(phase_args "$phase") \
        --search-growth "${GROWTH:-1.5}" --max-tokens "${CHAT_TOKENS:-64}" --ttfa-p95-ms "${TTFA_MS:-500}" \
        --chat-ttfa-p95-ms "${CHAT_TTFA_MS:-800}" --server-timeout 30 --out "$RES/${TAG}_$phase" ${LOAD_ARGS:-} 2>&1 \
        | grep -v "^\[.*\] N=" | tail -25
    done
    echo "after the phases: $(listen_drops)"
    [ -n "${SPY_PID:-}" ] && wait "$SPY_PID"  # py-spy writes its file when its time is up: before the copy
    [ -n "${TOP_PID:-}" ] && wait "$TOP_PID"
    python3 bench/placement_summary.py --dir "$RES" --tag "$TAG" --cards "$CARDS" --placement "$PLACEMENT"
    cp -r "$RES"/"${TAG}"_* "$OUT"/
    nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv | tee "$OUT/${TAG}_gpu_memory.csv"
    cp "$STATE/server.log" "$OUT/${TAG}_server.log"
    if [ -n "${KEEP:-}" ]; then echo "KEEP=1: the $TAG server stays up for the next call"; exit 0; fi
    stop_server
    exit 0
    ;;
esac
cleanup
