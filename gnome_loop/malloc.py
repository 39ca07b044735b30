"""glibc malloc settings that let XLA's CPU runtime reuse its scratch memory.

XLA's CPU runtime allocates a compiled program's scratch memory afresh on every call:
107 MB for the loss gradients of one width-64 member on a 16,384-edge batch. glibc
serves a block that large with mmap and unmaps it when it is freed (and a thread's own
arena can hold at most 64 MB), so every call faults its scratch back in page by page,
each page zeroed by the kernel. On the 2-core EPYC this was 26,000 page faults a call,
half the wall time of a train step (140 → 71 ms once the memory is kept; docs/performance.md).

With one arena (every thread allocates from the main heap), no mmap and no trimming of
the heap below 2 GB, a freed scratch block stays in the process and the next call gets
it back. The cost: freed memory is returned to the kernel only past 2 GB, so a
process's resident size stays near its high-water mark. `GNOME_LOOP_SYSTEM_MALLOC=1`
keeps glibc's defaults.

glibc reads these settings from the environment when a process starts, before any
thread has picked an arena (`ENVIRONMENT`: for worker processes that gnome_loop
starts); `keep_freed_memory` sets them in a running process with `mallopt`, which
reaches every thread created afterwards. Elsewhere (macOS, musl) both do nothing.
"""

from __future__ import annotations

import ctypes
import os

#: Largest trim threshold `mallopt` takes (an int): freed memory at the heap's top
#: goes back to the kernel only beyond this.
TRIM_THRESHOLD = 2**31 - 1

#: The settings as glibc's environment variables, for processes started from here.
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def enabled() -> bool:
    """False when the user asked for glibc's defaults (GNOME_LOOP_SYSTEM_MALLOC=1)."""
    return os.environ.get("GNOME_LOOP_SYSTEM_MALLOC", "") in ("", "0")


def keep_freed_memory() -> bool:
    """Set this process's malloc to keep freed memory for reuse (see the module's
    docstring). True when the C library took the settings."""
    if not enabled():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))


def worker_environment() -> dict[str, str]:
    """Environment variables for a worker process started by gnome_loop: `ENVIRONMENT`,
    or nothing when the user asked for glibc's defaults."""
    return dict(ENVIRONMENT) if enabled() else {}
