"""The campaign config: a YAML file validated with pydantic.

Every section has defaults except the chemical space. A bad config fails at
`gnome-loop init` with a message naming the field and what to do about it.
Longer than 450 lines on purpose: one section per room, in one file, so that the
config has one reference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gnome_loop.generate.external import PLACEHOLDERS, unknown_placeholders
from gnome_loop.structures import ChemicalSpace, is_known_element


class ConfigError(ValueError):
    """A config that cannot be used, with a message that names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChemicalSpaceConfig(_Section):
    elements: list[str] = Field(min_length=1, description="element symbols of the campaign")
    max_elements: int = Field(3, ge=1, le=8, description="most elements per compound")
    max_atoms: int = Field(20, ge=1, le=500, description="most atoms per cell")
    drop_missing_terminals: bool = Field(
        False, description="when round 0 ends without a terminal (an elemental entry) for an element, go on "
        "without that element instead of stopping; may be set after init, when the campaign stopped for it")

    @field_validator("elements")
    @classmethod
    def _real_elements(cls, value: list[str]) -> list[str]:
        unknown = [el for el in value if not is_known_element(el)]
        if unknown:
            raise ValueError(f"unknown element(s) {unknown}; use symbols such as 'Cu', 'O'")
        if len(set(value)) != len(value):
            raise ValueError("elements are listed twice")
        return sorted(value)

    def space(self) -> ChemicalSpace:
        """The bounds of this section, as the generators and readers take them."""
        return ChemicalSpace(tuple(self.elements), self.max_elements, self.max_atoms)


class SnapshotConfig(_Section):
    source: Literal["prototypes", "file", "mp"] = "prototypes"
    path: Optional[str] = Field(None, description="for source 'file': an entries JSON, a CSV of compositions and "
                                "corrected energies, an extxyz with energies, or a folder/zip of CIFs")
    scale: str = Field("mp2020", description="energy scale of a CSV or extxyz snapshot (entries JSON: detected)")
    endpoint: Optional[str] = Field(None, description="for source 'mp': the mp-api endpoint (default: MP's); "
                                    "the key comes from the MP_API_KEY environment variable")
    reevaluate: Literal["auto", "always", "never"] = Field(
        "auto",
        description="re-evaluate reference phases with the oracle; 'auto' does so "
        "unless the snapshot energies come from the same scale as the oracle",
    )
    reference_hull: Literal["auto", "mp", "none"] = Field(
        "auto",
        description="what candidates are judged against. 'mp': the Materials Project's stable phases of the "
        "space, shipped with gnome_loop (MP2020-corrected DFT energies, used as they are), while the prototypes "
        "and elemental structures are evaluated by the oracle only as substitution parents, dedup references "
        "and training data (matbench-discovery's protocol; needs source 'prototypes' and an oracle on the MP2020 "
        "scale). 'none': the snapshot's own phases (re-evaluated by an ML-potential oracle: a self-consistent "
        "hull). 'auto' is decided at init and written into the campaign's config.yaml: 'mp' for an MP2020-scale "
        "oracle with source 'prototypes' (unless reevaluate is 'always'), else 'none'",
    )

    @model_validator(mode="after")
    def _path_for_files(self) -> "SnapshotConfig":
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs 'path' (entries JSON, energy CSV, extxyz, or a folder of CIFs)")
        return self


def _three_positive(value: list[int] | None) -> list[int] | None:
    if value is not None and (len(value) != 3 or min(value) < 1):
        raise ValueError("supercell takes three positive integers, e.g. [2, 1, 1]")
    return value


#: A repeat of the parent cells, [a, b, c] (SAPS, permutation).
Supercell = Annotated[Optional[list[int]], AfterValidator(_three_positive)]


class SubstitutingGenerator(_Section):
    """What substitution and SAPS share: where their parents come from, and the plausibility rules."""

    parents: Union[Literal["known", "known+prototypes"], list[str]] = Field(
        "known+prototypes", description="parent sources: a list of `known` (the campaign's phases within "
        "parents_max_ehull of the hull), `prototypes` (AFLOW templates) and paths of structure files of any "
        "elements (CIF folder or zip, CSV(.gz) with a 'cif' column, extxyz, ...); `known` and "
        "`known+prototypes` are short for the first two")
    parents_max_ehull: float = Field(0.1, ge=0, description="known phases above the hull by more than this "
                                     "(eV/atom) are no parents (GNoME substituted from stable materials)")
    max_outside_parents: int = Field(200, ge=0, description="most parents taken from each file, those most "
                                     "likely to substitute into the space first")
    charge_balanced: bool = Field(True, description="candidates holding an anion (H N O F P S Cl Se Br Te I) "
                                  "need a charge-balanced oxidation-state guess (peroxides allowed)")

    @field_validator("parents", mode="before")
    @classmethod
    def _known_sources(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("known", "known+prototypes"):
            raise ValueError(f"{value!r} is not a source list; use e.g. [known, prototypes, path/to/cifs.zip]")
        if isinstance(value, list):
            if not value:
                raise ValueError("parents needs at least one source: known, prototypes or a path")
            if len(set(value)) != len(value):
                raise ValueError("parents lists a source twice")
            if any(not isinstance(item, str) or not item.strip() for item in value):
                raise ValueError("parents are `known`, `prototypes` or paths of structure files")
        return value


class SubstitutionGenerator(SubstitutingGenerator):
    enabled: bool = True
    threshold: float = Field(0.001, gt=0, le=1, description="Hautier probability cut-off (GNoME: 0.001)")
    alpha: float = Field(-5.0, description="lambda of never-observed substitutions")
    max_candidates: int = Field(500, ge=0, description="most candidates per round")


class SapsGenerator(SubstitutingGenerator):
    enabled: bool = True
    threshold: float = Field(0.001, gt=0, le=1, description="Hautier probability cut-off of the ion swap")
    alpha: float = Field(-5.0, description="lambda of never-observed substitutions")
    max_candidates: int = Field(300, ge=0, description="most candidates per round")
    max_per_parent: int = Field(20, ge=1, description="most candidates from one parent structure")
    supercell: Supercell = Field(None, description="repeat parents by [a, b, c] first (within max_atoms)")


class PermutationGenerator(_Section):
    """USPEX's permutation: ordering variants of known phases, two sites of one role swapped
    (gnome_loop.generate.permutation)."""

    enabled: bool = False
    max_candidates: int = Field(50, ge=0, description="most candidates per round")
    parents_max_ehull: float = Field(0.1, ge=0, description="known phases above the hull by more than this "
                                     "(eV/atom) are no parents")
    supercell: Supercell = Field(None, description="repeat parents by [a, b, c] first (within max_atoms): a "
                                 "small cell has few orderings")


class RandomGenerator(_Section):
    enabled: bool = False
    compositions: list[str] = Field([], description="formulas to search, e.g. ['Li2O', 'MgAl2O4']")
    per_composition: int = Field(5, ge=1, description="random cells per composition and round")
    max_candidates: int = Field(100, ge=0, description="most candidates per round")
    time_limit: float = Field(60.0, gt=0, description="seconds of random search per round")


class CompositionGenerator(_Section):
    enabled: bool = False
    n_compositions: int = Field(10, ge=1, description="best-scored new formulas handed to random search per round")
    per_composition: int = Field(4, ge=1, description="random cells per formula")
    max_candidates: int = Field(40, ge=0, description="most candidates per round")
    time_limit: float = Field(60.0, gt=0, description="seconds of random search per round")


class ImportGenerator(_Section):
    paths: list[str] = Field([], description="zip/folder/CSV(.gz)/extxyz of structures from generative models")
    max_candidates: int = Field(200, ge=0, description="most imported candidates per round (the rest wait)")


class GenerativeModelGenerator(_Section):
    """What the in-loop generative models (`llm`, `flow`) share: their checkpoint, prompts,
    samples and per-round fine-tuning (gnome_loop.generate.generative)."""

    enabled: bool = False
    checkpoint: str = Field("pretrained", description="the model to start from: `pretrained` (the one shipped in "
                            "gnome_loop/generative/pretrained/: lm/ and flow/, trained on mp37k) or the folder of one saved by "
                            "scripts/pretrain_generative.py; checked and made absolute at init")
    max_candidates: int = Field(100, ge=0, description="most candidates per round")
    prompts: Literal["ranked", "known", "both"] = Field(
        "both", description="the compositions prompted: `ranked` (new charge-balanced formulas of the space, best "
        "first as the composition generator ranks them), `known` (the campaign's formulas, nearest the hull first) "
        "or `both` (taken in turn)")
    compositions: int = Field(10, ge=1, description="formulas prompted per round, each at every cell size (a "
                              "multiple of the formula) within max_atoms")
    samples_per_prompt: int = Field(2, ge=1, description="samples drawn per formula and cell size")
    batch_size: int = Field(32, ge=1, description="samples drawn together")
    finetune_steps: int = Field(20, ge=0, description="fine-tuning steps before each round's sampling, from the "
                                "checkpoint, on the campaign's entries so far within finetune_max_ehull of the hull "
                                "(rejection-sampling fine-tuning; STaR's restart from the base model each round, so "
                                "that steps do not add up over rounds); 0 keeps the checkpoint frozen")
    finetune_max_ehull: float = Field(0.0, ge=0, description="entries at most this far above the hull (eV/atom, "
                                      "besides GNoME's 5e-5 tolerance) are fine-tuned on")
    finetune_learning_rate: float = Field(1e-4, gt=0, description="Adam's learning rate of the fine-tuning")
    finetune_batch_size: int = Field(8, ge=1, description="structures per fine-tuning step")
    finetune_own_samples: int = Field(0, ge=0, description="besides the oracle's entries, fine-tune on up to this "
                                      "many of the model's own samples of earlier rounds that the energy model "
                                      "(model.kind gnome) predicted nearest the hull and that were not sent to the "
                                      "oracle (reward-ranked fine-tuning with the filter as the reward; the scores "
                                      "are the last select stage's: one round old); 0: the oracle's entries only")


class LLMGenerator(GenerativeModelGenerator):
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: Optional[int] = Field(10, ge=1, description="draw from the k likeliest tokens only (null: all)")
    constrained: bool = Field(True, description="draw only tokens that can continue a CIF of the prompt's formula "
                              "(space groups that can hold it, Wyckoff multiplicities and the coordinates they fix, "
                              "room for each atom, sites until the formula is placed): 70 % of the shipped model's "
                              "samples valid instead of 22 %")


class FlowGenerator(GenerativeModelGenerator):
    steps: int = Field(100, ge=1, description="Euler steps of the sampling ODE")
    anti_annealing: float = Field(5.0, ge=0, description="FlowMM's inference anti-annealing s: the coordinates' "
                                  "velocity times 1 + s t (0: off; on perov_5 s = 2 to 10 all match as often "
                                  "as 0, with lower RMSE); not used with start `llm`")
    start: Literal["noise", "llm"] = Field("noise", description="where sampling starts: the base distribution, or "
                                           "`llm`: the language model's valid samples of the same prompts "
                                           "(FlowLLM; with generators.llm's checkpoint and sampling settings)")
    start_time: float = Field(0.0, ge=0, lt=1, description="with start `llm`: the time the language model's "
                              "structure is put at (0: FlowLLM, for a flow trained on such starts; e.g. 0.5 to "
                              "only refine with a flow trained from noise)")


class ExternalGenerator(_Section):
    """An installed generative model's command line, run every round (gnome_loop.generate.external)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the generator's name in status and in "
                      "the candidates' origin (a folder name: letters, digits, '_', '.', '-')")
    command: list[str] = Field(min_length=1, description="the program and its arguments, run without a shell in "
                               "a fresh folder; in arguments " + ", ".join(f"{{{key}}} ({text})"
                                                                          for key, text in PLACEHOLDERS.items())
                               + " are replaced")
    max_candidates: int = Field(100, ge=0, description="most candidates per round (also {budget})")
    timeout_s: float = Field(3600.0, gt=0, description="seconds before the command is killed (a failure)")

    @field_validator("command", mode="before")
    @classmethod
    def _argument_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("command is a list of arguments, e.g. [mattergen-generate, '{out}', --batch_size, "
                             "'{budget}'], never a shell string")
        if isinstance(value, list):  # numbers written in YAML are arguments too
            return [str(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else item
                    for item in value]
        return value

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the command's program is empty")
        unknown = sorted({name for argument in value for name in unknown_placeholders(argument)})
        if unknown:
            raise ValueError(f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; known: "
                             + ", ".join("{" + n + "}" for n in PLACEHOLDERS))
        return value


class Generators(_Section):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    substitution: SubstitutionGenerator = SubstitutionGenerator()
    saps: SapsGenerator = SapsGenerator()
    permutation: PermutationGenerator = PermutationGenerator()
    random: RandomGenerator = RandomGenerator()
    composition: CompositionGenerator = CompositionGenerator()
    imported: ImportGenerator = Field(ImportGenerator(), alias="import")
    llm: LLMGenerator = LLMGenerator()
    flow: FlowGenerator = FlowGenerator()
    external: list[ExternalGenerator] = Field([], description="commands of installed generative models, each "
                                              "{name, command, max_candidates, timeout_s}; one mapping or a list")

    @field_validator("external", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("external")
    @classmethod
    def _distinct_names(cls, value: list[ExternalGenerator]) -> list[ExternalGenerator]:
        names = [entry.name for entry in value]
        taken = sorted(set(names) & set(BUILT_IN_GENERATORS))
        if taken:
            raise ValueError(f"{', '.join(taken)}: the name of a built-in generator; choose another name")
        if len(set(names)) != len(names):
            raise ValueError("two external generators have the same name")
        return value


#: The built-in generators' names in the candidates table: the sections of `Generators`
#: (external ones take their own names).
BUILT_IN_GENERATORS = tuple(field.alias or name for name, field in Generators.model_fields.items()
                            if name != "external")


class Model(_Section):
    kind: Literal["gnome", "composition", "linear"] = Field(
        "gnome", description="energy model that scores candidates: the GNoME structure GNN ensemble, the "
        "composition model ensemble, or the per-element linear baseline")
    members: int = Field(4, ge=1, description="ensemble members (GNoME: 10)")
    width: int = Field(64, ge=4, description="hidden width (GNoME: 256; 64 fits a laptop CPU)")
    steps: int = Field(3, ge=1, le=8, description="message-passing steps (GNoME: 3 to 6)")
    cutoff: float = Field(4.0, gt=1.0, le=10.0, description="neighbour cutoff, Å (GNoME: 4)")
    epochs: int = Field(300, ge=1, description="most training epochs per round")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-4, gt=0, description="Adam, cosine-decayed (GNoME: about 5e-4)")
    patience: int = Field(60, ge=1, description="epochs without validation improvement before stopping")
    init: str = Field("pretrained", description="where each round's training starts: `pretrained` (the "
                      "model shipped with gnome_loop for this kind, fine-tuned on the campaign's entries), "
                      "`scratch` (random members), or the folder of a saved model of the same kind and shape; "
                      "the linear baseline always starts from scratch")
    volume_augmentation: list[float] = Field(
        [], description="volume factors also tried at prediction, lowest energy kept (e.g. [0.9, 1.1]); "
        "the structure model only")

    @field_validator("volume_augmentation")
    @classmethod
    def _positive_factors(cls, value: list[float]) -> list[float]:
        if any(not 0.5 <= factor <= 2.0 for factor in value):
            raise ValueError("volume factors must lie between 0.5 and 2.0")
        return value


class Selection(_Section):
    budget: int = Field(10, ge=1, description="oracle jobs per round")
    ehull_threshold: float = Field(0.05, ge=0, description="keep predicted E_hull below this, eV/atom (GNoME: 0.05)")
    per_composition: int = Field(2, ge=1, description="most selected structures per reduced formula")
    explore_fraction: float = Field(0.0, ge=0, le=1, description="share of the budget picked at random")
    strategy: Literal["model", "random"] = "model"
    fill_budget: bool = Field(True, description="when fewer candidates than the budget pass ehull_threshold, fill "
                              "the rest best predicted first, tagged 'fill'; false: GNoME's strict rule")
    kappa: float = Field(0.0, ge=0, description="rank by predicted E_hull minus kappa x the ensemble spread "
                         "(lower confidence bound); 0: by predicted E_hull")
    carry_over: bool = Field(True, description="unique candidates that earlier rounds did not select stay in the "
                             "pool, scored again each round by the retrained model against the new hull (GNoME "
                             "re-filtered its whole candidate set every round); false: a round chooses among its "
                             "own candidates only")


class Screening(_Section):
    enabled: bool = Field(False, description="run the substitution and SAPS generators as shard tasks (generate, "
                          "validate, score, dedup the best) on the dask cluster of the `local` scheduler, or on "
                          "the one at `scheduler.address` with any other scheduler (else in this process); their "
                          "max_candidates caps do not apply")
    parents_per_shard: int = Field(8, ge=1, description="parent structures per shard task")
    keep_per_shard: int = Field(50, ge=1, description="best-scored unique candidates a shard keeps in full; the "
                                "rest are stored as summary rows (id, formula, predicted E_hull, and whether the whole "
                                "ensemble or its first member predicted it)")
    cascade_margin: Optional[float] = Field(
        0.1, ge=0, description="screening cascade: the ensemble's first member scores every candidate, the whole "
        "ensemble only those within this many eV/atom of the shard's keep_per_shard-th best (only those can be "
        "kept; the others' summary rows carry the one member's E_hull); null: the whole ensemble scores all")


class Prerelax(_Section):
    kind: Literal["none", "nequip"] = Field(
        "none", description="'nequip': train a NequIP ensemble on the oracle's relaxation trajectories each round "
        "and relax the best candidates with it before the energy model scores them")
    members: int = Field(2, ge=2, description="NequIP ensemble members (their force spread flags candidates)")
    epochs: int = Field(30, ge=1, description="most NequIP training epochs per round")
    cutoff: float = Field(4.0, gt=1.0, le=10.0, description="NequIP neighbour cutoff, Å")
    irreps: str = Field("16x0e + 8x1o + 4x2e", description="NequIP hidden features (l ≤ 2; NequIP's papers use "
                        "32–64 channels per l, slower on a CPU)")
    blocks: int = Field(2, ge=1, le=6, description="NequIP interaction blocks")
    radial_hidden: int = Field(32, ge=4, description="width of the radial MLPs")
    patience: int = Field(10, ge=1, description="epochs without validation improvement before stopping")
    train_batch_size: int = Field(8, ge=1, description="frames per training step")
    frame_stride: int = Field(2, ge=1, description="train on every n-th ionic step of each trajectory")
    max_frames: int = Field(400, ge=10, description="most training frames (evenly thinned beyond this)")
    shortlist: int = Field(100, ge=0, description="candidates pre-relaxed per round, best predicted E_hull "
                           "first (0: all)")
    fmax: float = Field(0.05, gt=0, description="force convergence of the pre-relaxation, eV/Å")
    max_steps: int = Field(150, ge=1, description="most FIRE steps of the pre-relaxation")
    max_force_std: float = Field(0.5, gt=0, description="ensemble force spread (eV/Å) above which a relaxed "
                                 "candidate is flagged and kept unrelaxed")
    batch_size: int = Field(16, ge=1, description="structures relaxed together")

    @field_validator("irreps")
    @classmethod
    def _valid_irreps(cls, value: str) -> str:
        import e3nn_jax as e3nn

        try:
            irreps = e3nn.Irreps(value)
        except (ValueError, AssertionError) as error:
            raise ValueError(f"irreps {value!r} cannot be read ({error}); e.g. '16x0e + 8x1o + 4x2e'") from None
        if irreps.lmax > 2 or "0e" not in {str(ir) for _, ir in irreps}:
            raise ValueError("irreps need scalars (0e) and l ≤ 2, e.g. '16x0e + 8x1o + 4x2e'")
        return value


def _one_line(value: str, what: str) -> str:
    """Values that end up in job scripts or scheduler arguments never hold a line break."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{what} must be one line (no line breaks or NUL characters)")
    return value


class Vasp(_Section):
    command: str = Field("vasp_std", min_length=1, description="the VASP command run in each job folder, "
                         "e.g. 'srun vasp_std' (split like a shell would, each word quoted: no pipes or ';')")
    double_relax: bool = Field(False, description="relax twice, the second from the first's CONTCAR (atomate2)")
    custodian: bool = Field(False, description="run VASP under custodian's error handlers (custodian must be "
                            "installed where the jobs run)")
    incar: dict[str, Any] = Field({}, description="INCAR settings on top of MPRelaxSet; changing MP's settings "
                                  "can make results incompatible with MP's hull")

    @field_validator("command")
    @classmethod
    def _command_one_line(cls, value: str) -> str:
        return _one_line(value, "the VASP command")


class OracleConfig(_Section):
    kind: Literal["ase", "vasp"] = Field("ase", description="'ase' (an ASE calculator relaxes in-process or in "
                                         "run-job) or 'vasp' (job folders for VASP with MP settings)")
    calculator: str = Field("emt", description="'emt', 'chgnet', or an import path 'module:Class'")
    calculator_args: dict[str, Any] = Field({}, description="keyword arguments of an imported calculator class, "
                                            "e.g. {path_or_params: /abs/path/campaign/models/r002/nequip} for "
                                            "gnome_loop.models.nequip_train:NequIPCalculator")
    fmax: float = Field(0.05, gt=0, description="force convergence, eV/Å")
    max_steps: int = Field(300, ge=1, description="most optimiser steps")
    relax_cell: bool = True
    max_seconds: Optional[float] = Field(900.0, gt=0, description="wall-clock limit of one relaxation, s")
    max_attempts: int = Field(2, ge=1, description="tries per job before it is failed")
    energy_scale: str = Field("", description="name of the energy scale; default from the calculator. 'mp2020' "
                              "(or a name ending in '-mp2020') declares the energies comparable to MP's "
                              "MP2020-corrected DFT hull")
    vasp: Vasp = Vasp()

    @model_validator(mode="after")
    def _no_default_time_limit_for_vasp(self) -> "OracleConfig":
        # 900 s suits an ML potential; a DFT relaxation takes hours: VASP gets no limit unless one is set
        if self.kind == "vasp" and "max_seconds" not in self.model_fields_set:
            self.max_seconds = None
        return self

    @field_validator("calculator")
    @classmethod
    def _known_calculator(cls, value: str) -> str:
        if value not in ("emt", "chgnet") and ":" not in value:
            raise ValueError(f"unknown calculator {value!r}; use 'emt', 'chgnet' or 'package.module:Class'")
        return value

    @model_validator(mode="after")
    def _args_for_imported_calculators(self) -> "OracleConfig":
        if self.calculator_args and ":" not in self.calculator:
            raise ValueError(f"calculator_args are for an imported calculator ('module:Class'), not "
                             f"{self.calculator!r}")
        return self

    def scale(self) -> str:
        """The energy scale the oracle's energies live on (hulls never mix scales)."""
        if self.energy_scale:
            return self.energy_scale
        if self.kind == "vasp":
            return "mp2020"  # VASP with MP's settings, MP2020-corrected: the Materials Project's own scale
        return {"chgnet": "chgnet-mp2020", "emt": "emt"}.get(self.calculator, self.calculator)

    def mp2020_compatible(self) -> bool:
        """Whether the oracle's energies may be judged against MP's MP2020-corrected DFT hull: VASP with
        MP's settings ('mp2020'), or a potential trained to reproduce it ('chgnet-mp2020', or any scale a
        user names '...-mp2020'), as matbench-discovery judges such potentials."""
        scale = self.scale()
        return scale == "mp2020" or scale.endswith("-mp2020")


#: sbatch options the SLURM scheduler sets itself: jobs are found again by their name and array index.
RESERVED_SBATCH_OPTIONS = ("--job-name", "--array", "--output", "--parsable", "--wrap", "--clusters")


class Slurm(_Section):
    partition: Optional[str] = Field(None, description="sbatch --partition")
    account: Optional[str] = Field(None, description="sbatch --account")
    time: str = Field("24:00:00", description="sbatch --time of one job")
    nodes: int = Field(1, ge=1, description="sbatch --nodes of one job")
    ntasks_per_node: Optional[int] = Field(None, ge=1, description="sbatch --ntasks-per-node")
    directives: list[str] = Field([], description="more sbatch options, e.g. ['--qos=normal', '--mem=0']")
    prelude: list[str] = Field([], description="shell lines each job runs first, e.g. 'module load vasp/6.4' "
                               "(your own shell code, run as written)")
    max_array_size: int = Field(1000, ge=1, description="most tasks per sbatch job array (the site's MaxArraySize)")
    max_running: Optional[int] = Field(None, ge=1, description="most tasks of one array running at once (%N)")
    ended_grace: float = Field(300.0, ge=0, description="seconds a job SLURM says has ended may take to show its "
                               "outputs (shared file systems lag) before it counts as failed")

    @field_validator("partition", "account", "time")
    @classmethod
    def _value_one_line(cls, value: str | None) -> str | None:
        return value if value is None else _one_line(value, "a SLURM setting")

    @field_validator("directives", "prelude")
    @classmethod
    def _lines(cls, value: list[str], info) -> list[str]:
        for item in value:
            _one_line(item, f"each of slurm.{info.field_name}")
        if info.field_name == "directives":
            if any(not item.startswith("--") for item in value):
                raise ValueError("directives are sbatch long options such as '--qos=normal'")
            owned = [item for item in value if item.split("=")[0] in RESERVED_SBATCH_OPTIONS]
            if owned:
                raise ValueError(f"{', '.join(owned)}: gnome_loop sets these itself (it finds its jobs by them)")
        return value


class SchedulerConfig(_Section):
    kind: Literal["inline", "local", "manual", "slurm"] = "inline"
    workers: int = Field(2, ge=1, description="dask workers of the local cluster")
    address: Optional[str] = Field(None, description="address of an existing dask scheduler: the local "
                                   "scheduler's jobs run there; with another kind, the screening shards")
    slurm: Slurm = Slurm()


class CampaignConfig(_Section):
    name: str = "campaign"
    seed: int = 0
    rounds: int = Field(3, ge=0)
    chemical_space: ChemicalSpaceConfig
    snapshot: SnapshotConfig = SnapshotConfig()
    generators: Generators = Generators()
    model: Model = Model()
    selection: Selection = Selection()
    screening: Screening = Screening()
    prerelax: Prerelax = Prerelax()
    oracle: OracleConfig = OracleConfig()
    scheduler: SchedulerConfig = SchedulerConfig()

    @field_validator("prerelax", mode="before")
    @classmethod
    def _prerelax_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value  # `prerelax: nequip`

    @model_validator(mode="after")
    def _prerelax_needs_a_structure_model(self) -> "CampaignConfig":
        if self.prerelax.kind != "none" and self.model.kind != "gnome":
            raise ValueError(f"prerelax: {self.prerelax.kind} relaxes candidates for a structure model to score; "
                             f"model.kind {self.model.kind!r} reads only compositions (use model.kind: gnome)")
        return self

    @model_validator(mode="after")
    def _own_samples_need_a_structure_model(self) -> "CampaignConfig":
        for kind in ("llm", "flow"):
            if getattr(self.generators, kind).finetune_own_samples and self.model.kind != "gnome":
                raise ValueError(f"generators.{kind}.finetune_own_samples ranks the model's samples by the energy "
                                 f"model's E_hull; model.kind {self.model.kind!r} reads only compositions and gives "
                                 "every structure of a formula the same (use model.kind: gnome)")
        return self

    @model_validator(mode="after")
    def _mp_hull_needs_mp_energies(self) -> "CampaignConfig":
        if self.snapshot.reference_hull != "mp":
            return self
        if self.snapshot.source != "prototypes":
            raise ValueError(f"snapshot.reference_hull 'mp' adds MP's stable phases to the prototype snapshot; "
                             f"source {self.snapshot.source!r} brings its own references (use reference_hull: none)")
        if self.snapshot.reevaluate == "always":
            raise ValueError("snapshot.reference_hull 'mp' uses MP's energies as they are (MP's table has no "
                             "structures to re-evaluate); for a hull of the oracle's own energies use "
                             "reference_hull: none")
        if not self.oracle.mp2020_compatible():
            raise ValueError(f"snapshot.reference_hull 'mp' needs an oracle on MP's MP2020 scale (vasp, chgnet, or "
                             f"oracle.energy_scale: mp2020); this oracle's energies are on {self.oracle.scale()!r}")
        return self

    def resolved_reference_hull(self) -> str:
        """`snapshot.reference_hull` with 'auto' decided: 'mp' when the oracle's energies are on MP's
        scale and the snapshot is the prototype library (the hull is then made of real known
        materials), else 'none' (also when the references must be re-evaluated: `reevaluate:
        always`). `Campaign.create` writes the answer into config.yaml, so it is explicit."""
        setting = self.snapshot.reference_hull
        return self._auto_reference_hull() if setting == "auto" else setting

    def _auto_reference_hull(self) -> str:
        snapshot = self.snapshot
        comparable = snapshot.source == "prototypes" and snapshot.reevaluate != "always"
        return "mp" if comparable and self.oracle.mp2020_compatible() else "none"

    def digest(self) -> str:
        """Hash of the settings frozen at init (provenance of exports).

        `rounds`, `scheduler` and `chemical_space.drop_missing_terminals` are left
        out: a user may extend a finished campaign, move its jobs to another scheduler,
        or answer a campaign that stopped at the end of round 0 for want of a terminal
        (the elements it then drops are recorded in the campaign, so the setting does
        nothing afterwards); everything else decides what the
        campaign's data mean and must not change under it. Settings left at their
        defaults are left out too, so that a newer gnome_loop adding a setting can
        still resume a campaign made before; `snapshot.reference_hull` counts as left at
        its default ('auto') when it holds what 'auto' resolves to.
        """
        config = self
        if self.snapshot.reference_hull == self._auto_reference_hull():  # init writes auto's answer: the same
            config = self.model_copy(update={"snapshot": self.snapshot.model_copy(update={"reference_hull": "auto"})})
        frozen = config.model_dump(exclude={"rounds": True, "scheduler": True,
                                            "chemical_space": {"drop_missing_terminals"}}, exclude_defaults=True)
        return hashlib.sha1(json.dumps(frozen, sort_keys=True).encode()).hexdigest()[:12]


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "missing":
            message = "is required but missing"
        elif item["type"] == "extra_forbidden":
            message = "is not a known setting (check the spelling)"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"  {where}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: dict) -> CampaignConfig:
    """Validate a config dict; raise ConfigError naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError("invalid config: the file must hold a YAML mapping of settings")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def parse_model(**options) -> Model:
    """Validate a `model` section given as keyword arguments (`gnome-loop train`); raise
    ConfigError naming each bad field."""
    try:
        return Model(**options)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    return parse_config(data)


def dump_config(config: CampaignConfig, path: str | Path) -> None:
    """Write the validated config (all defaults filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(by_alias=True), sort_keys=False))
