#!/usr/bin/env bash
# Build every carry folder the GPU calls of bench/README.md name, in one command from the project root:
#
#   bash bench/prepare_device_carry.sh
#
# The folders are git-ignored, so a new checkout has none of them. What each call carries (64 MiB a call in all,
# this tree included; bench/README.md, "GPU", has the calls A1, A2, B, C and the jobs after them):
#   .devcarry/p1b   the first 28 MB of vLLM's compressed kernel library (call A1)
#   .devcarry/p1c   the rest of it (call A2, which joins the two in /tmp/vl)
#   .devcarry/p1    FlashAttention 3 (xz) and the snac wheel, with .devcarry/p2 (call B)
#   .devcarry/p2    vLLM's Python tree, its wheels and import stubs (call B)
#   .devcarry/p3    PyAV, which the server imports, as its wheel's files in one xz tarball (call C, with vllm_env.sh;
#                   ~25 MB against the wheel's ~36: session 41's call C with the wheel and the tree passed the 64 MiB)
#   .devcarry2/p2   vllm_env.sh alone, and .devcarry2/p3: py-spy, httptools, uvloop, websockets (uvicorn's WebSocket
#                   protocol, which the guarded Realtime protocol needs), pytest, and watchfiles, which the server
#                   imports, and compressed-tensors and loguru, for fp8 Orpheus (every call after C:
#                   `. .devcarry2/p2/vllm_env.sh` installs them into the /tmp/site call B made); the last three were in
#                   .devcarry/p3 until it and the tree passed the 64 MiB a call may carry
#   .devcarry2/p4   the VAD's wheels (onnxruntime, silero-vad), only for calls that load speech input (ASR, Realtime):
#                   with them, .devcarry2 and the tree passed the 64 MiB a call may carry (session 39), so a speech-input
#                   call carries .devcarry2/p2 and .devcarry2/p4, one after a call that carried .devcarry2/p2 and p3
# The download is cached in /tmp/vllm-carry-cache (../shared/gpu/prepare_carry.sh, which does the vLLM part).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED_GPU:-../shared/gpu}
PART=28M

bash "$SHARED/prepare_carry.sh" .devcarry av==18.1.0
rm -f .devcarry/p3/watchfiles-*.whl .devcarry/p3/compressed_tensors-*.whl .devcarry/p3/loguru-*.whl  # now in .devcarry2/p3
if [ -s .devcarry/p1/C.xz ]; then  # prepare_carry.sh writes it whole: split it over the two calls A1 and A2
  rm -rf .devcarry/p1b .devcarry/p1c
  mkdir -p .devcarry/p1b .devcarry/p1c
  split -b "$PART" .devcarry/p1/C.xz .devcarry/p1b/C.xz.part
  parts=(.devcarry/p1b/C.xz.part*)
  if [ "${#parts[@]}" -ne 2 ]; then
    echo "C.xz split into ${#parts[@]} parts of $PART, not 2: calls A1 and A2 carry two (raise PART)" >&2
    exit 1
  fi
  mv .devcarry/p1b/C.xz.partab .devcarry/p1c/
  rm .devcarry/p1/C.xz
fi
# A folder built on an earlier day keeps the wheels it had, and the registry may since serve newer ones beside them
# (session 27: sse-starlette 3.7.0 and 3.7.1, uvicorn 0.54.0 and 0.55.0), which pip then refuses to install together:
# keep the newest wheel of each distribution.
python3 - .devcarry/p2 .devcarry/p3 <<'PY'
import sys
from pathlib import Path
from packaging.utils import parse_wheel_filename
for folder in sys.argv[1:]:
    newest = {}
    for wheel in sorted(Path(folder).glob("*.whl")):
        name, version, *_ = parse_wheel_filename(wheel.name)
        if name in newest and newest[name][0] >= version:
            print(f"dropping {wheel.name}: {newest[name][1].name} is newer"); wheel.unlink(); continue
        if name in newest:
            print(f"dropping {newest[name][1].name}: {wheel.name} is newer"); newest[name][1].unlink()
        newest[name] = (version, wheel)
PY
cp .devcarry/p2/vllm_env.sh .devcarry/p3/ && chmod u+w .devcarry/p3/vllm_env.sh
# PyAV's wheel is zip-deflated ffmpeg libraries: its files in one xz tarball are ~11 MB smaller, and call C carries it
# beside the whole tree. The files are the wheel's as pip would install them into /tmp/site (no scripts, no compile).
for wheel in .devcarry/p3/av-*.whl; do
  [ -e "$wheel" ] || continue
  if [ "$(cat .devcarry/p3/av.tar.xz.from 2>/dev/null)" != "${wheel##*/}" ]; then  # ~1 min on 2 cores, once
    unpacked=$(mktemp -d)
    python3 -m zipfile -e "$wheel" "$unpacked"
    tar -C "$unpacked" -c . | xz -9 -T2 > .devcarry/p3/av.tar.xz
    echo "${wheel##*/}" > .devcarry/p3/av.tar.xz.from
    rm -rf "$unpacked"
  fi
  rm "$wheel"
done
cat >> .devcarry/p3/vllm_env.sh <<'SH'
_d=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)  # the script above unsets it at its end
if [ -s "$_d/p3/av.tar.xz" ] && ! [ -d /tmp/site/av ]; then  # PyAV's wheel's files (prepare_device_carry.sh)
  mkdir -p /tmp/site && xz -dc "$_d/p3/av.tar.xz" | tar -x -C /tmp/site
fi
unset _d
SH

mkdir -p .devcarry2/p2 .devcarry2/p3 .devcarry2/p4
cp .devcarry/p2/vllm_env.sh .devcarry2/p2/ && chmod u+w .devcarry2/p2/vllm_env.sh
cat >> .devcarry2/p2/vllm_env.sh <<'SH'
_d=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)  # the script above unsets it at its end
if compgen -G "$_d/p4/*.whl" >/dev/null && ! [ -d /tmp/site/silero_vad ]; then  # the VAD's, for speech input
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$_d"/p4/*.whl
fi
unset _d
SH
rm -f .devcarry2/p3/onnxruntime-*.whl .devcarry2/p3/flatbuffers-*.whl .devcarry2/p3/silero_vad-*.whl  # earlier layout
for folder_wheels in "p3 py-spy httptools uvloop websockets==15.0.1 pytest pluggy iniconfig pygments watchfiles \
compressed-tensors==0.17.0 loguru" \
  "p4 onnxruntime==1.24.1 flatbuffers silero-vad==6.2.3"; do
  read -r folder wheels <<< "$folder_wheels"
  # shellcheck disable=SC2086  # the wheels are words
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d ".devcarry2/$folder" $wheels
done
for folder_wheel in ".devcarry/p3 av.tar.xz" ".devcarry2/p3 watchfiles-" ".devcarry2/p3 compressed_tensors-" \
  ".devcarry2/p3 loguru-" ".devcarry2/p3 websockets-"; do  # the server imports every one (session 25 went without av)
  read -r folder wheel <<< "$folder_wheel"
  compgen -G "$folder/$wheel*" > /dev/null || { echo "no $wheel wheel in $folder" >&2; exit 1; }
done
# What each call sends, against the 64 MiB a call may carry (the tree's tracked files and the carry, on disk as `du`
# counts them: session 41's call C was refused at ~63 MiB of file sizes). The tree grows with bench/results.
tree_kib=$(git ls-files -z | xargs -0 du -k 2>/dev/null | awk '{s += $1} END {print s}')
over=0
for call_carry in "A1 .devcarry/p1b" "A2 .devcarry/p1c" "B .devcarry/p1 .devcarry/p2" "C .devcarry/p3" \
  "jobs .devcarry2/p2 .devcarry2/p3" "speech-input .devcarry2/p2 .devcarry2/p4"; do
  read -r call carry <<< "$call_carry"
  # shellcheck disable=SC2086  # the carry is words
  kib=$(( tree_kib + $(du -sk $carry | awk '{s += $1} END {print s}') ))
  awk -v call="$call" -v kib="$kib" -v tree="$tree_kib" -v carry="$carry" \
    'BEGIN {printf "%-13s %5.1f MiB (the tree %.1f + %s)\n", call, kib / 1024, tree / 1024, carry}'
  if [ "$kib" -gt $(( 64 * 1024 )) ]; then over=1; echo "  over the 64 MiB a call may carry" >&2
  elif [ "$kib" -gt $(( 60 * 1024 )) ]; then echo "  within 4 MiB of the 64 MiB a call may carry" >&2; fi
done
[ "$over" = 0 ] || { echo "a call would be refused: gzip large files of bench/results, or split a carry" >&2; exit 1; }
