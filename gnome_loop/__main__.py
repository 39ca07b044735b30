"""`python -m gnome_loop` is the `gnome-loop` command (job scripts use it: no PATH needed)."""

from gnome_loop.cli import main

main()
