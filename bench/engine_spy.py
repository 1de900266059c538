"""py-spy on a vLLM engine-core process: which of its threads holds the GIL, and doing what.

`bench/profile_engine.py --py-spy PATH` samples the engine core (a child process named ``VLLM::EngineCore``)
during its unprofiled window twice at once: every sample (``--idle``: what each thread is doing, waiting
included) and only the samples where a thread holds the GIL (``--gil``). Per thread, the share of samples
holding the GIL says how much of the interpreter the SNAC service thread takes from the engine core's
scheduler loop. The raw files (``py-spy record -f raw``: ``frame;frame;...;frame count`` per line, the first
frame naming the thread) are summarized here; they stay beside the report. From the command line, where one
thread's time goes, callers included, in any raw file (also a server's, sampled with ``--subprocesses``, whose
threads are keyed ``server:`` and ``engine:``):

    python bench/engine_spy.py arrivals_spy.txt --thread engine:snac-service
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

ENGINE_CORE_COMM = "VLLM::EngineCor"
"""The engine core's process name as /proc/<pid>/comm shows it (cut to 15 characters)."""


def child_pids(parent: int, proc: Path = Path("/proc")) -> list[int]:
    """Every descendant of ``parent`` (from /proc's ppid fields)."""
    parents: dict[int, int] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [parent]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == current]
        found += children
        frontier += children
    return sorted(found)


def engine_core_pids(parent: int, proc: Path = Path("/proc")) -> list[int]:
    """The engine-core processes among ``parent``'s descendants."""
    cores = []
    for pid in child_pids(parent, proc):
        try:
            if (proc / str(pid) / "comm").read_text().strip().startswith(ENGINE_CORE_COMM):
                cores.append(pid)
        except OSError:
            continue
    return cores


async def record(py_spy: str, pid: int, seconds: float, out: Path, gil: bool) -> Path:
    """``py-spy record`` of ``pid`` for ``seconds`` into ``out`` (raw format, per thread, 200 Hz)."""
    flags = ["--gil"] if gil else ["--idle"]
    process = await asyncio.create_subprocess_exec(
        py_spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200", "-f", "raw",
        "--threads", "--nonblocking", *flags, "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    return out


def summarize_raw(path: Path, top: int = 8) -> dict[str, Any]:
    """Samples per thread (the first frame of each stack) and each thread's top innermost frames."""
    per_thread: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, leaf = frames[0], frames[-1]
        per_thread[thread] += int(count)
        leaves.setdefault(thread, Counter())[leaf] += int(count)
    total = sum(per_thread.values()) or 1
    return {
        "samples": sum(per_thread.values()),
        "threads": {
            thread: {"share": n / total, "top": leaves[thread].most_common(top)}
            for thread, n in per_thread.most_common()
        },
    }


THREAD_FRAME = re.compile(r"^thread\s*\([^)]*\):?\s*")
"""The first frame of a thread's stack in py-spy's raw output: ``thread (1005): MainThread``."""


def _thread_key(frames: list[str]) -> tuple[str, int]:
    """(the thread's name without its id, prefixed ``engine:`` or ``server:`` when the stack starts with process
    frames, as ``py-spy --subprocesses`` writes them; the index of the thread's frame) of one raw stack."""
    at = next((i for i, frame in enumerate(frames) if frame.startswith("thread")), 0)
    name = THREAD_FRAME.sub("", frames[at]) or "thread"
    if not at:
        return name, at
    return ("engine:" if "EngineCore" in frames[at - 1] else "server:") + name, at


def _function(frame: str) -> str:
    """A frame without its line number: ``step (core.py:2)`` -> ``step (core.py)``."""
    return frame.rsplit(":", 1)[0] + ")" if frame.endswith(")") and ":" in frame else frame


def inclusive(path: Path, thread: str, top: int = 40) -> dict[str, Any]:
    """Per thread (`_thread_key`), its samples; over the threads whose key contains `thread`, the share of their
    samples in which each function is on the stack (inclusive time: where the time goes, callers included)."""
    per_thread: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    chosen = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        key, at = _thread_key(frames)
        per_thread[key] += int(count)
        if thread in key:
            chosen += int(count)
            functions.update(dict.fromkeys({_function(frame) for frame in frames[at + 1 :]}, int(count)))
    return {
        "threads": dict(per_thread.most_common()),
        "samples": chosen,
        "inclusive": [(name, n / max(chosen, 1)) for name, n in functions.most_common(top)],
    }


async def spy_engine_core(py_spy: str, parent: int, seconds: float, out_dir: Path) -> dict[str, Any]:
    """Both samplings of the first engine core under ``parent`` at once, raw files into ``out_dir`` (which
    exists); their summaries."""
    pids = engine_core_pids(parent)
    if not pids:
        return {"error": "no engine-core process found"}
    every, gil = await asyncio.gather(
        record(py_spy, pids[0], seconds, out_dir / "engine_core_idle.txt", gil=False),
        record(py_spy, pids[0], seconds, out_dir / "engine_core_gil.txt", gil=True),
    )
    return {"pid": pids[0], "every_sample": summarize_raw(every), "holding_the_gil": summarize_raw(gil)}


def main(argv: list[str] | None = None) -> int:
    """Print `inclusive` of one raw py-spy file (``engine_core_gil.txt``, a server's ``arrivals_spy.txt``...)."""
    p = argparse.ArgumentParser(description="py-spy raw samples: per thread, and where one thread's time goes")
    p.add_argument("raw", type=Path)
    p.add_argument(
        "--thread", required=True, help="a substring of the thread's key: engine:snac-service in a server's file, "
        "MainThread in profile_engine's engine_core_*.txt (no process frames there)",
    )  # fmt: skip
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args(argv)
    report = inclusive(args.raw, args.thread, args.top)
    for key, n in report["threads"].items():
        print(f"{n:8d}  {key}")
    print(f"-- {args.thread}: {report['samples']} samples; share of them with each function on the stack")
    for name, share in report["inclusive"]:
        print(f"{share:7.1%}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
