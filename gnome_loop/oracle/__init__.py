"""Oracles: turn a candidate structure into a relaxed structure and its energy.

`make_oracle` (`registry`) builds one from the `oracle` section of the config; `base`
describes the job-folder protocol that schedulers run, and `jobfolder` writes, runs
and reads job folders (`write_job`, `run_job`, `read_result`).
"""

from __future__ import annotations

from gnome_loop.oracle.ase_relax import AseRelaxOracle
from gnome_loop.oracle.base import Oracle, OracleResult
from gnome_loop.oracle.jobfolder import read_result, run_job, write_job
from gnome_loop.oracle.registry import ORACLE_KINDS, make_oracle

__all__ = ["AseRelaxOracle", "ORACLE_KINDS", "Oracle", "OracleResult", "make_oracle", "read_result", "run_job",
           "write_job"]
