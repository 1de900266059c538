#!/usr/bin/env bash
# One GPU session's plan as calls that follow each other within the device's 30 s idle window (session 6's; the
# earlier sessions' runs are the modes of bench/gpu_load.sh). Two jobs run in the background, each on its own
# card of `nvidia-h200-x2` (or one after the other on one card: SI_GPU=0 ONE_CARD=1):
#
#   onecard       (GPU ONECARD_GPU, 0): the shared layout without speech recognition (server flags ONECARD_ARGS added,
#                 e.g. --snac-in-engine), phases ONECARD_PHASES (default ttfa,speech,chat,nogate): TTFA at one stream
#                 (speech, chat; TTFA_REQUESTS, 3, each), the speech and chat capacity searches, the speech search
#                 again without admission by real-time headroom; also `arrivals` (Poisson at OC_ARRIVAL_LOADS, fractions
#                 of the speech capacity or of CAPACITY, default 0.8, one after another: TTFA against offered load;
#                 then the 1.5x overload), `burst` (one burst of BURST_N, default 1.7x the
#                 capacity), `levels` (bursts at OC_LEVELS, no search) and `mixed`.
#                 Bursts go out from CLIENT_PROCS (8) client processes. OC_PYSPY_S (seconds;
#                 empty: off) samples the server and its engine cores with py-spy from OC_PYSPY_DELAY (20) s into the
#                 arrivals phase (arrivals_spy.txt, raw, by thread); arrivals_streams.txt reads the arrivals stream by
#                 stream (bench/streams_summary.py).
#   baselines     (GPU BASE_GPU, else ONECARD_GPU; CARD0_JOBS="onecard baselines" runs it after onecard): bench/baselines.py
#                 in process at BASE_CONC (128,192) streams, modes BASE_MODES (raw,ours,ours_in_engine,silent).
#   baselines_x2  (after baselines): the same with two Orpheus engine processes on the card (--engines 2) at X2_CONC with
#                 X2_MODES (else BASE_CONC, BASE_MODES), into baselines_x2/.
#   baselines_b   (after baselines): the same with B_ARGS (--no-prefix-caching) added, at B_CONC with B_MODES, into baselines_b/.
#   baselines_c   (after baselines): baselines_b's second variant, C_ARGS (--no-prefix-caching) at C_CONC with C_MODES, into baselines_c/.
#   baselines_d   (after baselines): a third variant, D_ARGS at D_CONC with D_MODES, into baselines_d/.
#   baselines_rev (after baselines): baselines' ENGINE_ARGS at REV_CONC with REV_MODES (ours_in_engine), run from another tree
#                 (REV_TREE, /tmp/rev: an earlier revision's oai_server/ and bench/, e.g. unpacked from a carried
#                 `git archive`), into baselines_rev/: the same host measures what changed between two revisions.
#   snac          (GPU SNAC_GPU, else BASE_GPU): bench/snac_decode.py at batch 32-128, K 2/4/8, fp32/bf16/fp16, with and without
#                 cuDNN's benchmark mode (SNAC_ARGS replaces those flags, e.g. "--fusions off,decoder --kernel-profile").
#   depthwise     (GPU SNAC_GPU, else BASE_GPU): bench/depthwise_kernel.py, SNAC's 13 depthwise convolutions, ATen's kernel
#                 against the Triton kernel (--snac-depthwise triton) per block and warps (DEPTHWISE_ARGS: --batch 8,64).
#   baselines_fused (after snac and baselines): baselines' ours_in_engine again with the --snac-fusion the snac job found
#                 fastest among those within 50 dB of eager (best_fusion), into baselines_fused/.
#   step_profile  (GPU BASE_GPU): bench/profile_engine.py, the raw engine's decode step at PROF_CONC (192) streams
#                 (PROF_ARGS: its flags instead of ENGINE_ARGS, e.g. "--mode ours_in_engine --snac-fusion decoder";
#                 PYSPY=/tmp/site/bin/py-spy also samples the engine core's threads and GIL, bench/engine_spy.py).
#   step_profile_b (after step_profile): the same with PROF_B_ARGS (e.g. "--mode raw --no-prefix-caching", the other
#                 side of ours / raw at one N), into step_profile_b/.
#   churn_ab      (GPU BASE_GPU): bench/profile_engine.py --churn --no-trace once per variant in CHURN_VARIANTS (';'
#                 between them), each with CHURN_ARGS, at PROF_CONC (128): per variant the engine's steady and churning
#                 step (no py-spy, no torch profile: a variant adds `--py-spy /tmp/site/bin/py-spy` or `--trace`), into
#                 churn_ab/v<i>/ and churn_ab/summary.txt, and its table (bench/churn_table.py) in churn_ab/table.md.
#   servers_ab    (GPU ONECARD_GPU): onecard once per variant of SERVER_VARIANTS (';' between the server flags of each,
#                 replacing ONECARD_ARGS), one server after another, with ONECARD_PHASES (e.g. `levels`: bursts at the fixed
#                 OC_LEVELS, default 192,240,192,240, rather than a search whose bisection one short stream can turn),
#                 into servers_ab/v<i>/.
#   cards         (CARD0_JOBS="onecard cards": after onecard, and once the other card's job is done or CARDS_WAIT_S, 300,
#                 passed): one server on both cards, bench/gpu_load.sh placement with PL (speech), BUD (720 s) and PH
#                 (ttfa,speech,chat,mixed); its search starts SPEECH_START, CHAT_START, MIXED_START (onecard's: OC_SPEECH_START
#                 96, OC_CHAT_START 48, OC_MIXED_START 32; OC_SPEECH_MAX 512, OC_CHAT_MAX 384 and OC_SEARCH_RES
#                 16 bound the speech and chat searches).
#   twoservers    (CARD0_JOBS="onecard twoservers": after onecard, once the other card's job is done): one server per card,
#                 each the one-card layout (ONECARD_ARGS), ports 8090 and 8091, the load dealt out to both (load.py --url
#                 a,b: stream i to server i mod 2, as a round-robin balancer would); phases TWO_PHASES (speech,chat; also
#                 ttfa, mixed), searches from TS_SPEECH_START (256), TS_CHAT_START (160), TS_MIXED_START (64). Against
#                 `cards` (one server on both cards) it says whether one server process is what limits two cards.
#   replicated    (CARD0_JOBS="onecard replicated"): like twoservers, but ONE server with --placement replicated (auto's
#                 choice on two cards): a process per card on port 8090, the kernel spreading connections over them
#                 (the supervisor hands them out in turn); the server's view from each replica's own port (8091, 8092).
#                 TWO_PHASES, TS_* as twoservers.
#   gap           (CARD0_JOBS=gap, alone on the machine: SI_JOB=none): one server on GAP_CARDS (2) cards, layout PL (speech),
#                 TTFA at one stream then one burst of BURST_N (288) while py-spy (PYSPY_S, 15 s; empty: off) samples the server and
#                 `top` (TOP_S, 20 s) the host; with `.devcarry2`'s httptools and uvloop wheels the server runs as installed.
#   onecard_chat  (SI_JOB=onecard_chat, GPU SI_GPU, 1): onecard's phases OCC_PHASES (chat,mixed) on the second card while
#                 onecard runs its own (e.g. ttfa,speech) on the first: the one-card figures in half the time; with
#                 OCC_ARGS (server flags instead of ONECARD_ARGS) an A/B of a flag, one variant per card; OCC_FUSION=best
#                 adds the snac job's best --snac-fusion (SI_JOB="snac onecard_chat": a card's jobs run in turn).
#   asr_diag      (SI_JOB=asr_diag instead of speech_input): bench/audio_cpu.py, bench/asr_profile.py at 1 and 32
#                 (ASR_PROFILE= skips it), then the server with Whisper (a variant: ASR_SERVER_ENV, ASR_SERVER_ARGS)
#                 under bench/asr_load.py bursts of 32 while py-spy samples it and its engine cores.
#   speech_input  (GPU SI_GPU, 1): first bench/asr_profile.py (Whisper alone, in process; ASR_PROFILE= skips it), then
#                 one server with Gemma, Orpheus and Whisper: bench/realtime_load.py (1, 8, 32
#                 sessions), bench/asr_load.py (1 and 32 concurrent, 64 speech streams beside 32 transcribers), then
#                 the speech capacity search with Whisper loaded (its cost to the one-card capacity).
#
#   call A, carry .devcarry/p1:              . .devcarry/p1/vllm_env.sh; nvidia-smi -L
#   call B, carry .devcarry/p2 .devcarry/p3: . .devcarry/p2/vllm_env.sh; bash bench/gpu_session.sh setup
#   (never source vllm_env.sh through a pipe, `. env.sh | tail`: that runs it in a subshell and the environment is lost)
#   call C, carry .devcarry2:                . .devcarry2/p2/vllm_env.sh; bash bench/gpu_session.sh start
#   calls D...:                              bash bench/gpu_session.sh watch     (until both jobs are done)
#   then, if time is left, carry .devcarry/p2: . .devcarry/p2/vllm_env.sh; bash bench/gpu_session.sh cards2
#
# Every call returns $OUT/s6.tgz with everything the jobs wrote so far (a call returns at most 8 files). The
# jobs run from a copy of the tree (/tmp/repo), so a later call's fresh copy of the working tree does not touch
# them. GPU processes are stopped by the pids nvidia-smi lists (`stop`), never by `pkill -f <pattern>` (a pattern
# found in the call's own command line kills the call itself).
set -u
RAND=${RAND:-/tmp/rand}; S=${SESSION_DIR:-/tmp/s6}; REPO=${SESSION_REPO:-/tmp/repo}; MEAN_LENGTH_S=5.94
SERVE=(--engine vllm --llm-model-name "$RAND/gemma" --tts-model-name "$RAND/orpheus" --snac-model-name "$RAND/snac"
  --tts-gpu-memory-utilization "${TTS_MEM:-0.55}" --llm-gpu-memory-utilization "${LLM_MEM:-0.25}"
  --tts-max-num-seqs 384 --llm-max-num-seqs 256 --max-concurrent-streams 1024 --max-queued 1024)
gpu_pids() { nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null; }
pack() { tar czf "$OUT/s6.tgz" --exclude='*.pt.trace.json*' -C "$(dirname "$S")" "$(basename "$S")" 2>/dev/null; ls -la "$OUT/s6.tgz"; }
load() {  # bench/load.py against the job's server (PORT; or URL, e.g. two servers), with bench/README.md's capacity definitions
  python3 bench/load.py --url "${URL:-http://127.0.0.1:$PORT}" --server-timeout 480 --concurrency '' --search-growth 1.5 \
    --ttfa-p95-ms 500 --chat-ttfa-p95-ms 800 --max-tokens 64 --client-procs "${CLIENT_PROCS:-8}" "$@"
}
serving() {  # serving <pid> <port>: until the server answers /health/ready; false at once if it exited first (a
  # missing module on the card: session 25's first job waited 480 s on a server dead in its first second)
  local t0; t0=$(date +%s)
  until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$2/health/ready', timeout=5)" 2>/dev/null; do
    kill -0 "$1" 2>/dev/null || { echo "server $1 (port $2) exited before it was ready"; return 1; }
    [ $(( $(date +%s) - t0 )) -lt "${READY_S:-480}" ] || { echo "server $1 (port $2) not ready after ${READY_S:-480} s"; return 1; }
    sleep 2
  done
}
capacity_of() {  # capacity_of <results dir> <mode>: the search's capacity (0 when there is none)
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['search'][sys.argv[2]]['capacity'] or 0)" \
    "$1/results.json" "$2" 2>/dev/null || echo 0
}
onecard() {  # phases in ONECARD_PHASES (default ttfa,speech,chat,nogate), in that order
  W=$S/${OC_DIR:-onecard}; PORT=${OC_PORT:-8081}; local -x CUDA_VISIBLE_DEVICES=${ONECARD_GPU:-0}
  python3 -m oai_server serve "${SERVE[@]}" --no-asr ${ONECARD_ARGS:-} --port $PORT > $W/server.log 2>&1 &
  SP=$!
  serving $SP $PORT || return 1
  for phase in $(echo "${ONECARD_PHASES:-ttfa,speech,chat,nogate}" | tr , ' '); do
    case $phase in
      ttfa) load --mode both --concurrency 1 --requests-per-stream "${TTFA_REQUESTS:-3}" --warmup 1 --preconnect --out $W/ttfa \
              > $W/ttfa.log 2>&1 ;;
      speech) load --mode speech --search --search-start "${OC_SPEECH_START:-96}" --search-max "${OC_SPEECH_MAX:-512}" --search-resolution "${OC_SEARCH_RES:-16}" \
                --out $W/speech > $W/speech.log 2>&1 ;;
      arrivals)  # Poisson at OC_ARRIVAL_LOADS (fractions of the speech capacity, default 0.8) and the 1.5x overload
        C=${CAPACITY:-$(capacity_of $W/speech speech)}; [ "$C" -gt 0 ] || C=96
        RATE=$(python3 -c "print(','.join(str(round(float(f) * $C / $MEAN_LENGTH_S, 2)) for f in '${OC_ARRIVAL_LOADS:-0.8}'.split(',')))")
        spy_server $SP $W/arrivals_spy "${OC_PYSPY_S:-}" "${OC_PYSPY_DELAY:-20}" 100
        load --mode speech --arrival-rates "$RATE" --arrival-duration-s 40 --overload "$C" --overload-duration-s 40 \
          --out $W/arrivals > $W/arrivals.log 2>&1
        python3 bench/streams_summary.py $W/arrivals/results.json --buckets 8 > $W/arrivals_streams.txt 2>&1 ;;
      levels)  # bursts at fixed levels (OC_LEVELS, default 192,240,192,240), no search: an A/B of servers level by level
        load --mode speech --concurrency "${OC_LEVELS:-192,240,192,240}" --out $W/levels > $W/levels.log 2>&1 ;;
      burst)  # one burst far past the capacity (BURST_N, default 1.7x): every admitted stream must stay clean
        C=${CAPACITY:-$(capacity_of $W/speech speech)}; [ "$C" -gt 0 ] || C=128
        load --mode speech --concurrency "${BURST_N:-$(( C * 17 / 10 ))}" --out $W/burst > $W/burst.log 2>&1 ;;
      chat) load --mode chat --search --search-start "${OC_CHAT_START:-48}" --search-max "${OC_CHAT_MAX:-384}" --search-resolution "${OC_SEARCH_RES:-16}" \
              --out $W/chat > $W/chat.log 2>&1 ;;
      mixed) load --mode mixed --search --search-start "${OC_MIXED_START:-32}" --search-max 256 --search-resolution 16 \
               --out $W/mixed > $W/mixed.log 2>&1 ;;
      nogate)  # the same server without admission by real-time headroom: what the gate's waits cost a burst
        kill $SP; wait $SP 2>/dev/null
        python3 -m oai_server serve "${SERVE[@]}" --no-asr ${ONECARD_ARGS:-} --no-headroom-admission --port $PORT \
          > $W/server_nogate.log 2>&1 &
        SP=$!
        serving $SP $PORT || return 1
        load --mode speech --search --search-start "${OC_SPEECH_START:-96}" --search-max 512 --search-resolution 16 \
          --out $W/speech_nogate \
          > $W/speech_nogate.log 2>&1 ;;
    esac
  done
  kill $SP; wait $SP  # gone before the next job starts a server on the same port
}
spy_server() {  # spy_server <pid> <path stem> <seconds (empty: off)> <delay s> <rate>: py-spy (carried in .devcarry2/p3)
  # samples the server's threads and its engine cores' in the background, into <stem>.txt; SPY is its pid
  SPY=
  [ -n "$3" ] || return 0
  (sleep "$4"; /tmp/site/bin/py-spy record -p "$1" --subprocesses --threads --nonblocking -r "$5" -d "$3" -f raw \
     -o "$2.txt" > "$2.log" 2>&1) &
  SPY=$!
}
profile_asr() {  # profile_asr [asr_profile.py flags]: Whisper alone, in process, into $W (ASR_PROFILE= skips it)
  [ -n "${ASR_PROFILE-1}" ] || return 0
  python3 bench/asr_profile.py --model "$RAND/whisper" --out $W/asr_profile "$@" > $W/asr_profile.log 2>&1
}
speech_input() {
  W=$S/speech_input; PORT=8082; local -x CUDA_VISIBLE_DEVICES=${SI_GPU:-1}
  profile_asr
  python3 -m oai_server serve "${SERVE[@]}" --asr --asr-model-name "$RAND/whisper" --realtime-seed 7 --port $PORT \
    > $W/server.log 2>&1 &
  SP=$!
  serving $SP $PORT || return 1
  python3 bench/realtime_load.py --url "http://127.0.0.1:$PORT" --server-timeout 480 --sessions "${RT_SESSIONS:-1,8,32}" \
    --turns 2 --event-timeout 45 --out $W/realtime > $W/realtime.log 2>&1
  python3 bench/asr_load.py --url "http://127.0.0.1:$PORT" --out $W/asr --server-pid $SP --server-timeout 60 \
    --concurrency 1,32 --rounds 4 --duration-s 10 --speech-streams 64 --speech-seconds 8 --transcribers 32 \
    --warmup 4 > $W/asr.log 2>&1
  load --mode speech --search --search-start 96 --search-max 512 --search-resolution 16 --out $W/speech_with_asr \
    > $W/speech_with_asr.log 2>&1
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv > $W/gpu_apps.csv
  kill $SP
}
baselines() {  # ours / raw vLLM (/ the seed-style pipeline) side by side in process (bench/baselines.py), GPU 0
  W=$S/${BASE_DIR:-baselines}; local -x CUDA_VISIBLE_DEVICES=${BASE_GPU:-${ONECARD_GPU:-0}}; sleep 15  # the previous job's engines exit
  # NO_CLEANUP: gpu_load.sh would otherwise pkill every engine core of the machine, the other card's too
  NO_CLEANUP=1 OUT=$W CONC=${BASE_CONC:-128,192} MODES=${BASE_MODES:-raw,ours,ours_in_engine,silent} LOAD_TIMEOUT=${BASE_TIMEOUT:-420} \
    bash bench/gpu_load.sh baselines > $W/baselines.log 2>&1
}
baselines_fused() {  # baselines' ours_in_engine again, SNAC fused as the snac job found fastest (best_fusion), into its own dir
  BASE_DIR=baselines_fused BASE_MODES=ours_in_engine ENGINE_ARGS="${ENGINE_ARGS:-} --snac-fusion $(best_fusion)" baselines
}
baselines_b() {  # baselines again with B_ARGS added to ENGINE_ARGS (an A/B of an engine flag, e.g. --no-prefix-caching), into B_DIR
  BASE_DIR=${B_DIR:-baselines_b} BASE_CONC=${B_CONC:-${BASE_CONC:-}} BASE_MODES=${B_MODES:-${BASE_MODES:-}} \
    ENGINE_ARGS="${ENGINE_ARGS:-} ${B_ARGS:---no-prefix-caching}" baselines
}
baselines_c() {  # baselines_b again with C_ARGS for B_ARGS (a second variant in the same run), at C_CONC with C_MODES, into C_DIR
  B_DIR=${C_DIR:-baselines_c} B_CONC=${C_CONC:-${B_CONC:-}} B_MODES=${C_MODES:-${B_MODES:-}} B_ARGS="${C_ARGS:---no-prefix-caching}" \
    baselines_b
}
baselines_d() {  # baselines again with D_ARGS added to ENGINE_ARGS (a third variant in the same run), at D_CONC with D_MODES, into D_DIR
  BASE_DIR=${D_DIR:-baselines_d} BASE_CONC=${D_CONC:-${BASE_CONC:-}} BASE_MODES=${D_MODES:-${BASE_MODES:-}} \
    ENGINE_ARGS="${ENGINE_ARGS:-} ${D_ARGS:-}" baselines
}
baselines_rev() {  # baselines from the tree at REV_TREE (its own bench/ and oai_server/), into baselines_rev/
  W=$S/baselines_rev; local -x CUDA_VISIBLE_DEVICES=${BASE_GPU:-${ONECARD_GPU:-0}}; sleep 15
  ( cd "${REV_TREE:-/tmp/rev}" && NO_CLEANUP=1 OUT=$W CONC=${REV_CONC:-${BASE_CONC:-128,192}} \
      MODES=${REV_MODES:-ours_in_engine} LOAD_TIMEOUT=${BASE_TIMEOUT:-420} bash bench/gpu_load.sh baselines ) \
    > $W/baselines.log 2>&1
}
baselines_x2() {  # baselines_b with two Orpheus engines on the card behind the balancer (--engines 2), into baselines_x2/
  B_DIR=baselines_x2 B_CONC=${X2_CONC:-} B_MODES=${X2_MODES:-} B_ARGS="--engines 2" baselines_b
}
profile_step() {  # profile_step <dir> <engine args>: one engine's decode step at PROF_CONC (192) streams under
  # torch.profiler, and py-spy with PYSPY (bench/profile_engine.py), into <dir>
  W=$1; local -x CUDA_VISIBLE_DEVICES=${BASE_GPU:-${ONECARD_GPU:-0}}; sleep 15
  NO_CLEANUP=1 OUT=$W CONC=${PROF_CONC:-192} LOAD_TIMEOUT=${PROF_TIMEOUT:-400} ENGINE_ARGS="$2" \
    bash bench/gpu_load.sh profile > $W/step.log 2>&1
}
step_profile() { profile_step $S/step_profile "${PROF_ARGS-${ENGINE_ARGS:-}}"; }  # the raw engine unless PROF_ARGS
step_profile_b() { profile_step $S/step_profile_b "${PROF_B_ARGS:-}"; }  # a second variant (e.g. the other mode)
each_variant() {  # each_variant LIST DIR JOB: for each ';'-separated entry of LIST, in order, DIR/v<i>/ made, named in
  # DIR/variants.txt, and JOB run with i and the entry
  local i=0 variant variants
  IFS=';' read -ra variants <<< "$1"
  for variant in "${variants[@]}"; do
    i=$((i + 1)); mkdir -p "$2/v$i"; echo "v$i: $variant" >> "$2/variants.txt"; "$3" "$i" "$variant"
  done
}
churn_ab() {  # bench/profile_engine.py --churn --no-trace once per variant of CHURN_VARIANTS (';' between them), each with
  # CHURN_ARGS, at PROF_CONC (128): steady against churn per engine variant, one after another, into churn_ab/v<i>/
  W=$S/churn_ab; local -x CUDA_VISIBLE_DEVICES=${BASE_GPU:-${ONECARD_GPU:-0}}; sleep 15
  each_variant "${CHURN_VARIANTS:-}" $W churn_variant
  python3 bench/churn_table.py $W/summary.txt | tee $W/table.md
}
churn_variant() {  # churn_ab's variant $1, flags $2
  timeout "${CHURN_TIMEOUT:-300}" python3 bench/profile_engine.py --tts-model "$RAND/orpheus" --snac "$RAND/snac" \
    --concurrency "${PROF_CONC:-128}" --churn --no-trace --out $W/v$1 ${CHURN_ARGS:-} $2 > $W/v$1/profile.log 2>&1
  echo "v$1: $2" >> $W/summary.txt; grep "^unprofiled" $W/v$1/profile.log >> $W/summary.txt
}
best_fusion() {  # the --snac-fusion whose CUDA graphs decoded K=4 fastest at batch 64 in the snac job (off if none ran)
  python3 - "$S/snac/snac_decode.json" <<'PY' 2>/dev/null || echo off
import json, sys
report = json.load(open(sys.argv[1]))
diffs = report.get("fusion_vs_eager_max_abs_diff_int16", {})
best = {}
for row in report["rows"]:
    name = row["scheme"]
    if row.get("batch") == 64 and name.startswith("graph-K4") and "us_per_emitted_frame" in row:
        fusion = name.removeprefix("graph-K4").lstrip("-") or "off"
        snr = diffs.get(f"{fusion}_snr_db", 0)  # None: identical to eager
        if fusion == "off" or snr is None or snr >= 50:
            best[fusion] = row["us_per_emitted_frame"]
print(min(best, key=best.get) if best else "off")
PY
}
snac() {  # SNAC's GPU cost per emitted frame: precisions, K, cuDNN's own algorithm choice (bench/snac_decode.py)
  W=$S/snac; local -x CUDA_VISIBLE_DEVICES=${SNAC_GPU:-${BASE_GPU:-${ONECARD_GPU:-0}}}
  for bench in ${SNAC_VARIANTS-"" --cudnn-benchmark}; do  # SNAC_VARIANTS='""': only without cuDNN's benchmark mode
    [ "$bench" = '""' ] && bench=
    python3 bench/snac_decode.py --device cuda --snac "$RAND/snac" ${SNAC_ARGS:---batch 32,64,128 --frames-per-decode 2,4,8 \
      --repeats 20} $bench --out $W/snac_decode${bench:+_cudnn_benchmark}.json > $W/snac_decode${bench:+_cudnn_benchmark}.log 2>&1
  done
}
depthwise() {  # SNAC's depthwise convolutions alone: ATen's kernel against the Triton kernel (bench/depthwise_kernel.py)
  W=$S/depthwise; local -x CUDA_VISIBLE_DEVICES=${SNAC_GPU:-${BASE_GPU:-${ONECARD_GPU:-0}}}
  python3 bench/depthwise_kernel.py --device cuda ${DEPTHWISE_ARGS:---batch 8,64} --out $W/depthwise_kernel.json \
    > $W/depthwise_kernel.log 2>&1
}
both_cards() {  # wait for the other card's job (or CARDS_WAIT_S, 300), then stop every GPU process: both cards are free
  local t0; t0=$(date +%s)
  until [ -f $S/${SI_JOB:-speech_input}/done ] || [ $(( $(date +%s) - t0 )) -ge "${CARDS_WAIT_S:-300}" ]; do sleep 5; done
  gpu_pids | xargs -r kill -9; sleep 3
}
cards() {  # both cards behind one server (bench/gpu_load.sh placement), after the other card's job is done
  W=$S/cards; both_cards
  OUT=$W CARDS=2 PLACEMENT=${PL:-speech} BUDGET_S=${BUD:-720} PHASES=${PH:-ttfa,speech,chat,mixed} \
    LOAD_ARGS="--client-procs ${CLIENT_PROCS:-8}" bash bench/gpu_load.sh placement > $W/placement.log 2>&1
}
two_card_phases() {  # the phases TWO_PHASES (speech,chat) against $URL, into $W (twoservers, replicated)
  for phase in $(echo "${TWO_PHASES:-speech,chat}" | tr , ' '); do
    case $phase in
      ttfa) load --mode both --concurrency 2 --requests-per-stream 3 --warmup 2 --out $W/ttfa "$@" > $W/ttfa.log 2>&1 ;;
      speech) load --mode speech --search --search-start "${TS_SPEECH_START:-256}" --search-max 640 --search-resolution 32 \
                --out $W/speech "$@" > $W/speech.log 2>&1 ;;
      chat) load --mode chat --search --search-start "${TS_CHAT_START:-160}" --search-max 512 --search-resolution 16 \
              --out $W/chat "$@" > $W/chat.log 2>&1 ;;
      mixed) load --mode mixed --search --search-start "${TS_MIXED_START:-64}" --search-max 256 --search-resolution 16 \
               --out $W/mixed "$@" > $W/mixed.log 2>&1 ;;
    esac
  done
  gpu_pids | xargs -r kill
}
twoservers() {  # one server per card, each the one-card layout, the load dealt out to both (load.py --url a,b)
  W=$S/twoservers; both_cards
  for card in 0 1; do
    CUDA_VISIBLE_DEVICES=$card python3 -m oai_server serve "${SERVE[@]}" --no-asr ${ONECARD_ARGS:-} --port 809$card \
      > $W/server$card.log 2>&1 &
  done
  local URL=http://127.0.0.1:8090,http://127.0.0.1:8091  # seen by load(), not by the jobs after this one
  two_card_phases
}
replicated() {  # one server, --placement replicated: a process per card behind port 8090, connections handed out in turn
  W=$S/replicated; both_cards
  python3 -m oai_server serve "${SERVE[@]}" --no-asr ${ONECARD_ARGS:-} --placement replicated --port 8090 \
    --replica-base-port 8091 > $W/server.log 2>&1 &
  local SP=$!
  for port in 8091 8092; do  # both replicas ready, not only the first (the shared port answers from either)
    serving $SP $port || return 1
  done
  local URL=http://127.0.0.1:8090
  two_card_phases --metrics-url http://127.0.0.1:8091,http://127.0.0.1:8092
  kill $SP; wait $SP  # the supervisor: its replicas drain and exit with it
}
onecard_chat() {  # SI_JOB=onecard_chat: onecard's phases OCC_PHASES (chat,mixed) on the second card, beside onecard's on the first
  # (OCC_ARGS, when set, replaces ONECARD_ARGS here: an A/B of a server flag, one variant per card at the same time)
  # (OCC_FUSION=best adds --snac-fusion with the fusion the snac job found fastest, e.g. SI_JOB="snac onecard_chat")
  local args=${OCC_ARGS-${ONECARD_ARGS:-}}; [ "${OCC_FUSION:-}" = best ] && args="$args --snac-fusion $(best_fusion)"
  echo "onecard_chat server flags: $args"
  OC_DIR=onecard_chat OC_PORT=8083 ONECARD_GPU=${SI_GPU:-1} ONECARD_PHASES=${OCC_PHASES:-chat,mixed} \
    ONECARD_ARGS=$args onecard
}
servers_ab() {  # onecard once per server variant of SERVER_VARIANTS (';' between their flags, which replace ONECARD_ARGS),
  # one after another on ONECARD_GPU with ONECARD_PHASES (e.g. levels), into servers_ab/v<i>/ (variants.txt names them)
  each_variant "${SERVER_VARIANTS:-}" $S/servers_ab server_variant
}
server_variant() { OC_DIR=servers_ab/v$1 ONECARD_ARGS=$2 onecard; }  # servers_ab's variant $1, server flags $2
none() { :; }  # SI_JOB=none: the second card runs nothing (a job that needs both cards runs alone)
gap() {  # where a burst's TTFA goes beyond the server's own figures: one burst under py-spy and top (bench/gpu_load.sh)
  W=$S/gap; mkdir -p $W
  # NO_CLEANUP: placement stops its own server by its process group; gpu_load.sh's cleanup kills by a pattern this
  # job runner's command line holds too, which took the jobs named after gap with it (session 40)
  NO_CLEANUP=1 OUT=$W CARDS=${GAP_CARDS:-2} PLACEMENT=${PL:-speech} PHASES=${GAP_PHASES:-ttfa,burst} BURST_N=${BURST_N:-288} PYSPY_S=${PYSPY_S-15} \
    TOP_S=${TOP_S-20} PYSPY=/tmp/site/bin/py-spy LOAD_ARGS="--client-procs ${CLIENT_PROCS:-8}" BUDGET_S=${BUD:-540} \
    bash bench/gpu_load.sh placement > $W/placement.log 2>&1
}
asr_diag() {  # where 32 concurrent transcriptions spend their time, in process and through the server
  W=$S/asr_diag; PORT=8082; local -x CUDA_VISIBLE_DEVICES=${SI_GPU:-1}
  python3 bench/audio_cpu.py --out $W > $W/audio_cpu.log 2>&1  # the host's CPU side first (seconds, no GPU)
  profile_asr --concurrency 1,32 --rounds 2
  # ASR_SERVER_ENV (e.g. OMP_NUM_THREADS=4) and ASR_SERVER_ARGS (e.g. --asr-max-num-batched-tokens 3000): a variant
  env ${ASR_SERVER_ENV:-} python3 -m oai_server serve "${SERVE[@]}" --asr --asr-model-name "$RAND/whisper" \
    ${ASR_SERVER_ARGS:-} --port $PORT > $W/server.log 2>&1 &
  SP=$!
  serving $SP $PORT || return 1
  spy_server $SP $W/spy32 20 12 200  # through the bursts of 32
  python3 bench/asr_load.py --url "http://127.0.0.1:$PORT" --out $W/asr --server-pid $SP --server-timeout 60 \
    --concurrency 1,32 --rounds 12 --saturate 0 --speech-streams 0 --warmup 4 ${ASR_LOAD_ARGS:-} > $W/asr.log 2>&1
  curl -s "http://127.0.0.1:$PORT/metrics" > $W/metrics.txt
  wait $SPY; kill $SP  # a bare `wait` would wait for the server too
}
job() {  # job <name>...: run them one after another from the copy of the tree, each with its log and done marker
  # (one shell runs a card's jobs in turn: a job's card is `local -x CUDA_VISIBLE_DEVICES`, or the next job inherits it)
  for name in "$@"; do mkdir -p "$S/$name"; rm -f "$S/$name/done"; done  # a rerun of a job waits for its new end
  # every function of this script goes along (a job may call any other); the redirections on the whole background
  # list: nothing of it may hold the call's stdout open
  ( cd "$REPO" && setsid bash -c "$(declare -f); $(declare -p SERVE S RAND MEAN_LENGTH_S); \
      for name in $*; do \$name > $S/\$name/job.log 2>&1; touch $S/\$name/done; done" ) < /dev/null > /dev/null 2>&1 &
}
case "${1:-}" in
  setup)
    python3 bench/build_random_models.py --out "$RAND" --which all --device cuda > /tmp/build.log 2>&1 \
      || { tail -30 /tmp/build.log; exit 4; }
    python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from _common import ensure_snac; ensure_snac(Path('$RAND/snac'))"
    ls "$RAND"; nvidia-smi -L
    ;;
  start)
    rm -rf "$REPO" && mkdir -p "$REPO" "$S" && tar --exclude='./.devcarry*' --exclude=./.git -cf - . | tar -xf - -C "$REPO"
    if [ -n "${ONE_CARD:-}" ]; then job speech_input onecard; else job ${CARD0_JOBS:-onecard}; job ${SI_JOB:-speech_input}; fi
    sleep 5; exec bash "$0" watch
    ;;
  watch)  # until both jobs are done or WATCH_S (540) passed; then pack
    # a machine handed back between calls comes back bare: without the jobs' folder there is nothing to wait for,
    # and waiting would spend WATCH_S of device time (session 29 lost 560 s so)
    [ -d "$S" ] && [ -d "$REPO" ] || { echo "watch: no jobs were started on this machine ($S is absent): a fresh machine, run setup and start again" >&2; exit 3; }
    T0=$(date +%s)
    LAST0=${CARD0_JOBS:-onecard}; LAST0=${LAST0##* }; LAST1=${SI_JOB:-speech_input}; LAST1=${LAST1##* }
    while [ ! -f $S/$LAST0/done ] || [ ! -f $S/$LAST1/done ]; do
      [ $(( $(date +%s) - T0 )) -ge "${WATCH_S:-540}" ] && break
      sleep 20
    done
    for f in $S/*/*.log; do
      case "$f" in */server.log) grep -c "" "$f" | sed "s|^|$f lines: |"; grep -m5 "ready\|Traceback\|Error" "$f";;
        *) echo "== $f"; grep -v '^\[.*\] N=' "$f" | tail -12;; esac
    done
    ls $S/*/done 2>/dev/null; pack
    ;;
  cards2)  # the two-card placement run (bench/gpu_load.sh placement), packed beside the jobs' results
    gpu_pids | xargs -r kill -9; sleep 3
    R=$OUT; export OUT=$S/cards2; mkdir -p "$OUT"
    CARDS=2 PLACEMENT=${PL:-auto} BUDGET_S=${BUD:-540} PHASES=${PH:-ttfa,speech,chat,mixed} \
      bash bench/gpu_load.sh placement 2>&1 | tail -60
    export OUT=$R; pack
    ;;
  stop)  # every GPU process of this machine
    gpu_pids | xargs -r kill -9
    ;;
  *)
    sed -n '2,/^set -u$/{/^set -u$/!p}' "$0"; exit 2
    ;;
esac
