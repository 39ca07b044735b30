"""glibc's malloc: settings that let XLA's CPU runtime reuse its scratch memory, and
handing free pages back to the kernel.

XLA's CPU runtime allocates a compiled program's scratch memory afresh on every call:
107 MB for the loss gradients of one width-64 member on a 16,384-edge batch. glibc
serves a block that large with mmap and unmaps it when it is freed (and a thread's own
arena can hold at most 64 MB), so every call faults its scratch back in page by page,
each page zeroed by the kernel. On the 2-core EPYC this was 26,000 page faults a call,
half the wall time of a train step (140 → 70 ms once the memory is kept; docs/performance.md).

With one arena (every thread allocates from the main heap), no mmap and no trimming of
the heap below 2 GB, a freed scratch block stays in the process and the next call gets
it back. The cost: freed memory goes back to the kernel only past 2 GB, or when `trim`
is called (screening workers call it after every shard), so a process's resident size
stays near its high-water mark. `GNOME_LOOP_SYSTEM_MALLOC=1` leaves the C library's
(and dask's) defaults alone.

glibc reads these settings from the environment when a process starts, before any
thread has an arena (`worker_environment`: for the worker processes gnome_loop
starts). `keep_freed_memory` sets them in a running process with `mallopt`, which
reaches only threads that first allocate afterwards and only while the process has
few arenas: a thread keeps the arena it has, and one that arrives later may share
another thread's arena, whose blocks over 64 MB are mmapped whatever the settings. So
`import gnome_loop` before libraries that start threads (pyarrow, which pandas
imports, does), or set `ENVIRONMENT` before Python starts. Elsewhere than glibc
(macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Callable

#: Largest trim threshold `mallopt` takes (an int): freed memory at the heap's top
#: goes back to the kernel only beyond this.
TRIM_THRESHOLD = 2**31 - 1

#: The settings as glibc's environment variables, for processes started from here.
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _libc_function(name: str) -> Callable | None:
    """`name` from the C library, or None where it has none (macOS, musl, Windows)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


def enabled() -> bool:
    """False when the user asked for the C library's defaults (GNOME_LOOP_SYSTEM_MALLOC=1)."""
    return os.environ.get("GNOME_LOOP_SYSTEM_MALLOC", "") in ("", "0")


def keep_freed_memory() -> bool:
    """Set this process's malloc to keep freed memory for reuse (see the module's
    docstring for which threads it reaches). True when the C library took every setting."""
    mallopt = _libc_function("mallopt") if enabled() else None
    if mallopt is None:
        return False
    taken = [mallopt(parameter, value) == 1 for parameter, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))]
    return all(taken)


def worker_environment() -> dict[str, str]:
    """Environment variables for a worker process started by gnome_loop: `ENVIRONMENT`,
    or nothing when the user asked for the defaults."""
    return dict(ENVIRONMENT) if enabled() else {}


_MALLOC_TRIM = _libc_function("malloc_trim")


def trim() -> None:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim; nothing
    elsewhere): a long-lived worker otherwise keeps the high-water mark of its largest task."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
