"""gnome_loop: active-learning discovery of stable inorganic crystals, the GNoME way."""

from gnome_loop.malloc import keep_freed_memory

__version__ = "0.1.0"

# Before numpy or XLA start their threads: XLA's CPU scratch memory is reused, not
# faulted in again on every call (gnome_loop/malloc.py).
keep_freed_memory()
