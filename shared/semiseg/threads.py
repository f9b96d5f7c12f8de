"""How many CPU threads torch uses in a bundle run: the template's ``num_threads`` setting.

torch runs each CPU operation on ``torch.get_num_threads()`` threads (one per core by default) and waits at the end
of each for the slowest. When another process takes one of the cores, one thread of every operation waits for the
scheduler, and a training step of thousands of small operations slows by far more than the lost core: on the
2-core machine of docs/benchmarks.md the demo's supervised step went from about 0.13 s to 8.7 s beside one busy
single-threaded process. :func:`configure_threads`, the second ``initialize`` expression of a training or evaluation
run on the CPU, therefore chooses at start:

- ``num_threads`` N (``--num_threads N``): N threads;
- else, when ``OMP_NUM_THREADS`` is set: what torch took from it;
- else (``num_threads`` null, the default): one thread per core that no other process kept busy at start (measured
  over half a second from ``/proc/stat``, not from the load average, which still counts a run that has just ended),
  at most torch's default and at least one; where ``/proc/stat`` is missing (not Linux), torch's default.

It says in one log line what it chose and how to set it: a process that starts later can still take a core.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch

__all__ = ["busy_cores", "choose_threads", "configure_threads", "usable_cores"]

logger = logging.getLogger(__name__)

THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables through which a user has already chosen the thread count."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores from ``/proc/stat``, or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = 0.5) -> float | None:
    """Cores kept busy by other processes: the busy share of all cores over ``window_s`` (this process sleeps
    meanwhile) times their number, or None where ``/proc/stat`` is not available (not Linux).

    Args:
        window_s: how long to watch ``/proc/stat``.

    Returns:
        Busy cores, or None.
    """
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    return (os.cpu_count() or 1) * (second[0] - first[0]) / (second[1] - first[1])


def choose_threads(default: int, cores: int, busy: float | None) -> int:
    """One thread per core left free by other processes, at most ``default``, at least one.

    Args:
        default: torch's thread count (one per core unless ``OMP_NUM_THREADS`` says otherwise).
        cores: the cores this process may use.
        busy: cores kept busy by other processes (:func:`busy_cores`), or None when unknown (``default`` is kept).

    Returns:
        The thread count: ``max(1, min(default, round(cores - busy)))``.
    """
    if busy is None:
        return max(1, int(default))
    return max(1, min(int(default), math.floor(cores - busy + 0.5)))


def configure_threads(num_threads: int | None = None, device: Any = "cpu") -> int:
    """Set torch's CPU thread count for this run (module docstring) and say so in one log line.

    Args:
        num_threads: the ``num_threads`` setting: an integer >= 1, or None to choose (module docstring).
        device: the run's device; on a GPU torch's default is kept and nothing is logged.

    Returns:
        The thread count now in use (a value for the ``initialize`` list).
    """
    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    how = "set it with --num_threads N (or OMP_NUM_THREADS)"
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
        logger.info(f"semiseg: torch uses {int(num_threads)} CPU thread(s) (--num_threads).")
        return int(num_threads)
    chosen_by = next((name for name in THREADS_ENV if os.environ.get(name)), None)
    if chosen_by is not None:
        threads = torch.get_num_threads()
        logger.info(f"semiseg: torch uses {threads} CPU thread(s) ({chosen_by}); {how}.")
        return threads
    cores, default, busy = usable_cores(), torch.get_num_threads(), busy_cores()
    threads = choose_threads(default, cores, busy)
    torch.set_num_threads(threads)
    seen = f"{busy:.1f} busy with other processes at start" if busy is not None else "their load unknown"
    logger.info(
        f"semiseg: torch uses {threads} CPU thread(s) ({cores} cores, {seen}); a process that takes a core later "
        f"slows every step of a run with more threads than free cores: {how}."
    )
    return threads
