"""Pick the fastest of a few interchangeable implementations by timing them once per problem key, as an
autotuner does (Triton's autotune, cuBLASLt's heuristic + timing): the merger's GEMMs have no single best
kernel on Hopper (cuBLAS's own choice is 610-800 TFLOP/s across the merger's shapes, and the CUTLASS
configurations beat it on some and lose on others; benchmarks/NOTES.md session 21).

`pick(key, candidates, default)` returns the name of the fastest candidate for `key`, timing every candidate
on the caller's own inputs the first time a key is seen (CUDA events; a few rounds, each timing every
candidate in a rotated order; the median round counts). While a CUDA graph is being captured nothing is timed:
a key seen before keeps its choice, a new one gets `default` (not cached). QVDP_TUNE=0 turns timing off
(always `default`).

QVDP_TUNE_CACHE=<file.json> keeps the choices across processes: they are read from the file on the first pick
and every new choice is added to it (written to a temporary file, then renamed over it). The file records
torch's and CUDA's versions and is ignored under other versions (cuBLAS's kernels change with them). Keys must
be tuples of str / int / float / bool / None, and should name the device model rather than its index.
"""
from __future__ import annotations

import ast
import json
import os
import statistics
from typing import Callable, Dict, Hashable, Optional

import torch

_CHOICES: Dict[Hashable, str] = {}
_TIMES: Dict[Hashable, Dict[str, float]] = {}
_LOADED = {"path": None}  # the cache file read into _CHOICES (None: none yet)


def _versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda}


def _read(path: str) -> Dict[Hashable, str]:
    """The choices stored in a cache file written under these versions ({} if none, unreadable or other)."""
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("versions") != _versions():
            return {}
        return {ast.literal_eval(k): v for k, v in data["choices"].items()}
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, AttributeError):
        return {}


def _load() -> None:
    path = os.environ.get("QVDP_TUNE_CACHE")
    if path and _LOADED["path"] != path:
        for k, v in _read(path).items():
            _CHOICES.setdefault(k, v)
        _LOADED["path"] = path


def _save(key: Hashable, name: str) -> None:
    path = os.environ.get("QVDP_TUNE_CACHE")
    if not path:
        return
    merged = _read(path)  # other processes (DP ranks) may have added keys since this one read it
    merged[key] = name
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump({"versions": _versions(), "choices": {repr(k): v for k, v in merged.items()}}, f, indent=0)
        os.replace(tmp, path)
    except OSError:  # a read-only or missing directory: tuning still works, it just is not kept
        pass


def enabled() -> bool:
    return os.environ.get("QVDP_TUNE", "1") != "0"


# GPU cycles of busy-wait queued before each timed sample (~0.5 ms at Hopper clocks; QVDP_TUNE_HEAD overrides, 0: none)
HEAD_CYCLES = 1_000_000


def event_ms(fn: Callable[[], object], reps: int, head_cycles: Optional[int] = None) -> float:
    """GPU ms per call: CUDA events around `reps` back-to-back calls on the current stream. A GPU busy-wait is
    queued first, so the host has queued the calls by the time the GPU reaches the first event: without it a
    sample starts on an idle GPU and counts the host's launch time of the first call (and of every call a
    slow host cannot queue ahead), which favoured the candidates with the least host work instead of the
    fastest kernels (s23, H200: the merger's pairs timed 0.375-0.393 ms per call in tuning, the same calls
    0.329 ms back to back). head_cycles: the busy-wait's length (None: QVDP_TUNE_HEAD, else HEAD_CYCLES; 0: none)."""
    head = head_cycles if head_cycles is not None else _head_cycles()
    if head > 0 and hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(head)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def _head_cycles() -> int:
    raw = os.environ.get("QVDP_TUNE_HEAD")
    try:
        return HEAD_CYCLES if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"QVDP_TUNE_HEAD must be a whole number of GPU cycles (0: no busy-wait), got {raw!r}") from None


def pick(key: Hashable, candidates: Dict[str, Callable[[], object]], default: str, rounds: int = 5,
         reps: int = 3) -> str:
    """The name of the fastest candidate for key (see the module docstring). Every candidate must be
    side-effect free apart from its result (each runs 1 + rounds * reps times while tuning)."""
    _load()
    hit = _CHOICES.get(key)
    if hit is not None and hit in candidates:
        return hit
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if len(candidates) == 1 or not enabled() or capturing:
        return default
    for fn in candidates.values():  # warm: JIT compiles, cuBLAS handles, workspaces
        fn()
    # Each round starts at a different candidate and the median round counts: a sustained GEMM load lowers an
    # H100's clock within a second (power cap), so a fixed order with the best round would favour the first
    # candidates (s21e: the same shape tuned twice picked a kernel 7% slower the second time).
    names = list(candidates)
    ts = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            ts[n].append(event_ms(candidates[n], reps))
    best = {n: statistics.median(v) for n, v in ts.items()}
    choice = min(best, key=best.get)
    if len(_CHOICES) > 4096:
        _CHOICES.clear()
        _TIMES.clear()
    _CHOICES[key], _TIMES[key] = choice, best
    _save(key, choice)
    return choice


def remember(key: Hashable, name: str) -> None:
    """Record `name` as key's choice without timing (a choice derived from other keys' timings)."""
    _CHOICES[key] = name
    _save(key, name)


def choice(key: Hashable):
    """The cached choice for key, or None."""
    _load()
    return _CHOICES.get(key)


def timings(key: Hashable) -> Dict[str, float]:
    """The ms per call measured for key's candidates (empty when key was not tuned)."""
    return dict(_TIMES.get(key, {}))


def near(key: Hashable, within: float, most: int = 3):
    """The names of key's candidates timed within `within` (a fraction) of its fastest, fastest first, at most
    `most` of them (empty when key was not tuned)."""
    t = _TIMES.get(key, {})
    if not t:
        return []
    best = min(t.values())
    return sorted((n for n in t if t[n] <= best * (1.0 + within)), key=t.get)[:most]


def clear() -> None:
    """Forget every choice in this process (the cache file, if any, is read again on the next pick)."""
    _CHOICES.clear()
    _TIMES.clear()
    _LOADED["path"] = None
