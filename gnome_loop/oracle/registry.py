"""The oracles by kind: the registry above the oracles it names. Add an oracle class
here (and its `oracle.kind` in `gnome_loop.config`).
"""

from __future__ import annotations

from gnome_loop.config import OracleConfig
from gnome_loop.oracle.ase_relax import AseRelaxOracle
from gnome_loop.oracle.base import Oracle

ORACLE_KINDS = ("ase", "vasp")

def make_oracle(config: dict | OracleConfig) -> Oracle:
    """The oracle an `OracleConfig` section (or its `model_dump()`) describes."""
    data = config.model_dump() if isinstance(config, OracleConfig) else dict(config)
    kind = data.get("kind", "ase")
    if kind not in ORACLE_KINDS:
        raise ValueError(f"unknown oracle kind {kind!r}; known kinds: {', '.join(ORACLE_KINDS)}")
    settings = OracleConfig.model_validate(data)
    if settings.kind == "vasp":
        from gnome_loop.oracle.vasp import VaspOracle

        vasp = settings.vasp
        return VaspOracle(vasp.command, double_relax=vasp.double_relax, custodian=vasp.custodian,
                          incar=vasp.incar, max_seconds=settings.max_seconds, scale=settings.scale())
    return AseRelaxOracle(
        settings.calculator, settings.fmax, settings.max_steps, settings.relax_cell, scale=settings.scale(),
        max_seconds=settings.max_seconds, calculator_args=settings.calculator_args,
    )
