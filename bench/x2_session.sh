#!/usr/bin/env bash
# One GPU session's plan on the two-card machine (nvidia-h200-x2), as calls that follow each other within the
# device's 30 s idle window. Every result is packed into one tarball under $OUT (a call returns at most 8 files).
#
#   call A, carry .devcarry/p1:                    . .devcarry/p1/vllm_env.sh; nvidia-smi -L
#   call B, carry .devcarry/p2 .devcarry/p3:       . .devcarry/p2/vllm_env.sh; bash bench/x2_session.sh setup
#   call C, carry .devcarry2 (onnxruntime, silero-vad wheels + a copy of vllm_env.sh):
#                                                  . .devcarry2/p2/vllm_env.sh; bash bench/x2_session.sh speech-input
#   call D, carry .devcarry/p2:                    . .devcarry/p2/vllm_env.sh; bash bench/x2_session.sh cards2
#   call E (if time is left), carry .devcarry/p2:  . .devcarry/p2/vllm_env.sh; PL=speech PH=speech BUD=300 bash bench/x2_session.sh cards2
#
# setup:        builds the random models, then starts the one-card placement run (CARDS=1, ttfa/speech/chat/mixed) on
#               GPU 0 in the background (setsid, a copy of the tree in /tmp/repo1, its server kept up: KEEP=1, so it
#               never kills what runs on GPU 1).
# speech-input: on GPU 1, while that runs: one server with Gemma, Orpheus and Whisper, then bench/realtime_load.py
#               (RT_SESSIONS, default 1,8,32) and bench/asr_load.py against it; then waits for the one-card run and
#               packs both ($OUT/speech_input.tgz).
# cards2:       bench/gpu_load.sh placement on both cards (PL=auto, PH=ttfa,chat,mixed,speech, BUD=540 s), packed as
#               $OUT/cards2_<PL>.tgz; its start stops the one-card server.
# GPU processes are stopped by the pids nvidia-smi lists, never by `pkill -f <pattern>` (a pattern found in the
# call's own command line kills the call itself).
set -u
RAND=${RAND:-/tmp/rand}
gpu_pids() { nvidia-smi --query-compute-apps=pid --format=csv,noheader "$@" 2>/dev/null; }
case "${1:-}" in
  setup)
    python3 bench/build_random_models.py --out "$RAND" --which all --device cuda > /tmp/build.log 2>&1 \
      || { tail -30 /tmp/build.log; exit 4; }
    ls "$RAND"
    rm -rf /tmp/repo1 && mkdir -p /tmp/repo1
    tar --exclude='./.devcarry*' --exclude=./.git -cf - . | tar -xf - -C /tmp/repo1
    ( cd /tmp/repo1 && export PYTHONPATH="/tmp/repo1:/tmp/site:/tmp/vllm-stubs" \
      && setsid bash -c 'OUT=/tmp/p1out CARDS=1 PLACEMENT=auto PORT=8081 BUDGET_S=${P1_BUDGET:-480} KEEP=1 \
         bash bench/gpu_load.sh placement > /tmp/p1.log 2>&1; touch /tmp/p1.done' < /dev/null > /dev/null 2>&1 & )
    sleep 5; nvidia-smi -L
    ;;
  speech-input)
    export CUDA_VISIBLE_DEVICES=1
    W=/tmp/speech_input; mkdir -p $W; T0=$(date +%s)
    python3 bench/build_random_models.py --out "$RAND" --which whisper > /dev/null 2>&1 || true
    python3 -m oai_server serve --engine vllm --llm-model-name "$RAND/gemma" --tts-model-name "$RAND/orpheus" \
      --snac-model-name "$RAND/snac" --tts-gpu-memory-utilization 0.55 --llm-gpu-memory-utilization 0.25 \
      --tts-max-num-seqs 256 --max-concurrent-streams 256 --port 8080 --asr --asr-model-name "$RAND/whisper" \
      --realtime-seed 7 ${SERVE_ARGS:-} > $W/server.log 2>&1 &
    SP=$!
    timeout "${RT_T:-300}" python3 bench/realtime_load.py --url http://127.0.0.1:8080 --server-timeout 330 \
      --sessions "${RT_SESSIONS:-1,8,32}" --turns 2 --event-timeout 45 --out $W/realtime > $W/realtime.log 2>&1
    echo "realtime rc=$? at $(( $(date +%s) - T0 )) s"; tail -30 $W/realtime.log
    left=$(( ${SI_BUDGET:-545} - ($(date +%s) - T0) ))
    timeout "$left" python3 bench/asr_load.py --url http://127.0.0.1:8080 --out $W/asr --server-pid $SP \
      --server-timeout 60 --concurrency 1,32 --rounds 4 --duration-s 10 --speech-streams 64 --speech-seconds 8 \
      --transcribers 32 --warmup 4 > $W/asr.log 2>&1
    echo "asr rc=$? at $(( $(date +%s) - T0 )) s"; tail -30 $W/asr.log
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee $W/gpu_apps.csv
    grep -n "ready:\|Traceback\|ERROR" $W/server.log | head -20
    kill $SP
    while [ ! -f /tmp/p1.done ] && [ $(( $(date +%s) - T0 )) -lt "${WAIT_P1_S:-575}" ]; do sleep 3; done
    echo "one-card run finished: $([ -f /tmp/p1.done ] && echo yes || echo no)"; tail -25 /tmp/p1.log
    cp /tmp/p1.log $W/ 2>/dev/null; cp /tmp/oai-placement/server.log $W/p1_server.log 2>/dev/null
    cp -r /tmp/oai-placement/results $W/p1results 2>/dev/null
    tar czf "$OUT/speech_input.tgz" -C /tmp speech_input
    ;;
  cards2)
    R=$OUT; export OUT=/tmp/cards2; rm -rf "$OUT"
    CARDS=2 PLACEMENT=${PL:-auto} BUDGET_S=${BUD:-540} PHASES=${PH:-ttfa,chat,mixed,speech} KEEP=1 \
      bash bench/gpu_load.sh placement 2>&1 | tail -60
    tar czf "$R/cards2_${PL:-auto}.tgz" -C /tmp cards2 oai-placement/server.log
    ;;
  stop)  # every GPU process of this machine
    gpu_pids | xargs -r kill -9
    ;;
  *)
    sed -n '2,21p' "$0"; exit 2
    ;;
esac
