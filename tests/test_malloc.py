"""gnome_loop/malloc.py: XLA's scratch memory is reused between calls, not faulted in
again (measured by page faults in a fresh process, glibc only)."""

import json
import os
import subprocess
import sys

import pytest

from gnome_loop.malloc import ENVIRONMENT, keep_freed_memory, worker_environment

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

#: Page faults of 20 calls of a jitted program with two 64 MB scratch buffers, after 30
#: calls in which the heap settles (calls overlap a little: the heap grows to hold two).
PROGRAM = """
import resource, json
import gnome_loop
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x)[::-1] * jnp.cos(x) + jnp.exp(-x)))
x = jnp.ones(2**24)
for _ in range(30):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    f(x).block_until_ready()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def page_faults(**env: str) -> int:
    """The faults of PROGRAM in a fresh process whose environment holds no malloc settings
    (a dask cluster may have left some in this one) but `env`."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROGRAM], env={**clean, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_scratch_memory_is_reused_between_calls():
    system = page_faults(GNOME_LOOP_SYSTEM_MALLOC="1")
    if system < 10_000:  # 20 calls × 32,768 pages of 4 kB where the kernel maps them one by one
        pytest.skip(f"glibc's defaults fault only {system} pages here (huge pages?): nothing to compare")
    kept = page_faults(GNOME_LOOP_SYSTEM_MALLOC="0")
    assert kept < 0.2 * system, (kept, system)  # glibc faults it in on every call; kept: at most a few


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_settings_are_taken_and_can_be_declined(monkeypatch):
    assert keep_freed_memory() is True
    monkeypatch.setenv("GNOME_LOOP_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False
    assert set(ENVIRONMENT) == {"MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"}
    assert worker_environment() == {}
    monkeypatch.setenv("GNOME_LOOP_SYSTEM_MALLOC", "0")
    assert worker_environment() == ENVIRONMENT
