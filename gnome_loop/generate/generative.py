"""The generative models in the loop (issue 19, item 3): the CIF language model (`llm`)
and the flow-matching structure generator (`flow`) of `gnome_loop.generative`,
prompted with compositions of the campaign's space and taught by the campaign.

Each round, before it samples, a model is fine-tuned for a few steps on the campaign's
entries that the oracle put on or near the hull so far (rejection-sampling fine-tuning:
keep what the oracle rewarded), always starting from the checkpoint, as STaR does
(Zelikman et al., NeurIPS 2022, restart from the base model at every iteration): the
rewarded set grows round by round, the drift does not. Fine-tuning on from the round
before's weights would add the steps up over a campaign, and many steps on the few
structures near the hull ruin the model (`experiments/bench_generator_drift.py`). The
weights go to `models/rNNN/<kind>/` with the model card's `finetune` record (steps,
structures, loss), written whole or not at all, so a generate stage killed and re-run
loads them instead of training twice. A round with nothing to learn from samples the
checkpoint and saves nothing.

The oracle judges a few dozen samples a round, the energy model every one. With
`finetune_own_samples`, a model also learns from its own samples of earlier rounds
that the energy model (retrained on the oracle's results every round) predicted
nearest the hull and that were not sent to the oracle: reward-ranked fine-tuning
with a learnt reward (RAFT, Dong et al., TMLR 2023; CrystalFormer-RL rewards a
crystal generator with an ML potential's energy above the hull, Cao and Wang 2025).
The scores are those of the last select stage, so the reward is one round old.

The prompts are formulas at every cell size within `max_atoms` (a formula times 1, 2,
...). The language model's CIFs are each parsed and checked (`generative.checks`:
truncated, unparseable, formula, space-group, and the structure checks), the rejects
counted by reason; the flow writes the prompted atoms by construction, and the generate
stage's validation checks its structures like every generator's. A structure drawn
twice in a round counts once, the repeats as `duplicate`.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
from pymatgen.core import Composition, Structure

from gnome_loop.config import GenerativeModelGenerator, Generators, LLMGenerator
from gnome_loop.generate.composition import balanced_formulas, score_compositions
from gnome_loop.generate.imported import DUPLICATE
from gnome_loop.generative import cif_lm, flow
from gnome_loop.generative.checkpoint import CARD
from gnome_loop.generative.checks import Reject, check_sample
from gnome_loop.generative.cif_tokens import encode, formula_text, prompt, symmetrise, write_cif
from gnome_loop.generative.training import fit, initial_fit_state, make_optimizer
from gnome_loop.hull import STABLE_TOL
from gnome_loop.structures import Candidate, ChemicalSpace

#: Where the shipped checkpoints go (scripts/pretrain_generative.py), by config section.
PRETRAINED = {kind: Path(__file__).parents[1] / "generative" / "pretrained" / folder
              for kind, folder in (("llm", "lm"), ("flow", "flow"))}
KINDS = tuple(PRETRAINED)


@dataclass(frozen=True)
class Generator:
    """A loaded model of either kind: its network settings, parameters and card (and
    the flow's lattice statistics)."""

    kind: str  # "llm" or "flow"
    config: Any
    params: Any
    card: dict
    stats: flow.LatticeStats | None = None

    @classmethod
    def load(cls, kind: str, directory: Path) -> "Generator":
        """ValueError when `directory` holds no model of this kind."""
        if kind == "llm":
            config, params, card = cif_lm.load_lm(directory)
            return cls(kind, config, params, card)
        config, params, stats, card = flow.load_flow(directory)
        return cls(kind, config, params, card, stats)

    def save(self, directory: Path) -> None:
        if self.kind == "llm":
            cif_lm.save_lm(directory, self.config, self.params, self.card)
        else:
            flow.save_flow(directory, self.config, self.params, self.stats, self.card)

    def max_atoms(self, space_max: int) -> int:
        """The largest cell it may be prompted with."""
        return min(space_max, self.config.max_atoms) if self.kind == "flow" else space_max


def checkpoint_folder(kind: str, checkpoint: str) -> Path:
    """The folder a config's `checkpoint` names (`pretrained`: the one shipped for `kind`)."""
    return PRETRAINED[kind] if checkpoint == "pretrained" else Path(checkpoint)


def resolved_checkpoint(kind: str, checkpoint: str, elements: Sequence[str]) -> str:
    """The absolute folder of a config's `checkpoint` (`pretrained` stays as it is), after
    loading it; ValueError saying why it cannot serve the campaign's `elements`."""
    folder = checkpoint_folder(kind, checkpoint).resolve()
    try:
        card = Generator.load(kind, folder).card
    except ValueError as error:
        if checkpoint == "pretrained":
            raise ValueError(f"the pretrained {kind} of this installation cannot be loaded ({error}); reinstall "
                             f"gnome_loop, or train one with scripts/pretrain_generative.py and give its folder"
                             ) from None
        raise
    missing = sorted(set(elements) - set(card.get("elements", elements)))
    if missing:
        raise ValueError(f"{folder} was trained on no structure holding {', '.join(missing)}")
    return checkpoint if checkpoint == "pretrained" else str(folder)


def models_in_use(generators: Generators) -> list[str]:
    """The kinds of model a config's generators need: the flow's FlowLLM mode needs the
    language model too."""
    flow_on = generators.flow.enabled
    return [kind for kind, on in (("llm", generators.llm.enabled or (flow_on and generators.flow.start == "llm")),
                                  ("flow", flow_on)) if on]


def prompt_formulas(mode: str, n: int, space: ChemicalSpace, known: Sequence[tuple[str, float | None]],
                    scorer: Callable[[list[str]], list[float | None]] | None = None) -> list[str]:
    """The `n` formulas to prompt: `ranked` (the composition generator's new
    charge-balanced formulas, best scored first), `known` (the campaign's compounds of
    two or more elements, lowest E_hull first) or `both`, taken in turn."""
    compounds = [(formula, e_hull) for formula, e_hull in known
                 if len(Composition(formula)) > 1 and space.holds(el.symbol for el in Composition(formula))]
    near_hull = [formula for formula, _ in sorted(compounds, key=lambda item: (item[1] is None, item[1] or 0.0))]
    ranked: list[str] = []
    if mode != "known":
        known_formulas = {formula for formula, _ in known}
        new = [formula for formula in balanced_formulas(space.elements, max_elements=space.max_elements,
                                                        max_atoms=space.max_atoms) if formula not in known_formulas]
        ranked = [formula for formula, _ in score_compositions(new, scorer)]
    lists = {"ranked": [ranked], "known": [near_hull], "both": [ranked, near_hull]}[mode]
    taken = (f for f in chain.from_iterable(zip_longest(*lists)) if f is not None)
    return list(dict.fromkeys(taken))[:n]


def prompt_cells(formulas: Sequence[str], max_atoms: int) -> list[Composition]:
    """Each formula at every cell size within `max_atoms`: its reduced formula times 1, 2, ..."""
    cells = []
    for formula in formulas:
        unit = Composition(formula).reduced_composition
        cells += [unit * z for z in range(1, int(max_atoms // unit.num_atoms) + 1)]
    return cells


class Generated(NamedTuple):
    """A model's round: its candidates (one per distinct structure), the rejects by
    reason, the samples drawn, and what its fine-tuning did (`finetune` of the card)."""

    candidates: list[Candidate]
    rejected: Counter
    samples: int
    training: dict


def propose(kind: str, generators: Generators, models: Path, round_: int, seed: int,
            entries: Sequence[tuple[str, Structure, float | None]], formulas: Sequence[str],
            max_atoms: int, own: Sequence[Structure] = ()) -> Generated:
    """The round's samples of the `kind` model, fine-tuned first on the `entries` (id,
    structure, E_hull) near the hull and on `own`, its samples of earlier rounds that the
    energy model rewarded, prompted with `formulas`; in `models` (the campaign's models/)
    its weights of each round."""
    settings = getattr(generators, kind)
    model, training = round_generator(kind, settings, models, round_, entries, seed, own)
    cells = prompt_cells(formulas, model.max_atoms(max_atoms))
    rows = [cell for cell in cells for _ in range(settings.samples_per_prompt)]
    key = jax.random.PRNGKey(seed)
    if kind == "llm":
        drawn, rejected = _sample_llm(model, rows, generators.llm, key)
    elif settings.start == "llm":  # FlowLLM: the language model proposes, the flow refines
        language_model, _ = round_generator("llm", generators.llm, models, round_, entries, seed)
        starts, rejected = _sample_llm(language_model, rows, generators.llm, key)
        refined = _in_batches(lambda chunk, _: flow.refine(model.config, model.params, model.stats, chunk,
                                                           settings.steps, settings.start_time),
                              [structure for _, structure in starts], settings.batch_size)
        drawn = [(cell, structure) for (cell, _), structure in zip(starts, refined)]
    else:
        drawn, rejected = list(zip(rows, _in_batches(
            lambda chunk, index: flow.sample(model.config, model.params, model.stats, chunk,
                                             jax.random.fold_in(key, index), settings.steps,
                                             settings.anti_annealing),
            rows, settings.batch_size))), Counter()
    candidates: dict[str, Candidate] = {}
    for cell, structure in drawn:
        candidate = Candidate(structure, kind, (), {"prompt": formula_text(cell), "weights": training["weights"]})
        if candidate.id in candidates:
            rejected[DUPLICATE] += 1
        candidates.setdefault(candidate.id, candidate)
    return Generated(list(candidates.values()), rejected, len(rows), training)


def round_generator(kind: str, settings: GenerativeModelGenerator, models: Path, round_: int,
                    entries: Sequence[tuple[str, Structure, float | None]], seed: int,
                    own: Sequence[Structure] = ()) -> tuple[Generator, dict]:
    """The model of round `round_` and its fine-tuning record: the weights saved in
    models/rNNN/<kind> by an earlier run of this round, else the checkpoint fine-tuned
    on the entries within `finetune_max_ehull` of the hull and on `own` (earlier samples
    the energy model rewarded), saved there when training took place."""
    target = models / f"r{round_:03d}" / kind
    if (target / CARD).is_file():
        model = Generator.load(kind, target)
        return model, model.card["finetune"]
    start = checkpoint_folder(kind, settings.checkpoint)
    model = Generator.load(kind, start)
    near_hull = [structure for _, structure, e_hull in entries
                 if e_hull is not None and e_hull <= settings.finetune_max_ehull + STABLE_TOL]
    tuned, record = finetune(model, near_hull + list(own), settings.finetune_steps, settings.finetune_learning_rate,
                             settings.finetune_batch_size, seed)
    record = {"round": round_, "start": str(start), "weights": str(start), "own_samples": len(own), **record}
    if record["steps"]:
        record["weights"] = str(target.relative_to(models.parent))  # models/rNNN/<kind>, as the campaign names it
        _save_whole(replace(tuned, card={**tuned.card, "finetune": record}), target)
    return tuned, record


def finetune(model: Generator, structures: Sequence[Structure], steps: int, learning_rate: float, batch_size: int,
             seed: int) -> tuple[Generator, dict]:
    """`model` trained `steps` Adam steps on batches drawn from `structures` (those it can
    read: a CIF within the language model's length, a cell within the flow's atoms), and
    {"steps", "structures", "learning_rate", "batch_size", "loss_first", "loss_last"}; no
    steps without structures."""
    if model.kind == "llm":
        items = [crystal for crystal in map(_symmetrised, structures)
                 if crystal is not None and len(encode(write_cif(crystal))) < model.config.max_len]
    else:
        items = [s for s in structures if len(s) <= model.config.max_atoms]
    if not (steps and items):
        return model, {"steps": 0, "structures": len(items)}
    rng = np.random.default_rng(seed)
    widest = max(len(s) for s in items) if model.kind == "flow" else 0  # one padded shape, one compile

    def batch(_: int) -> list:
        chosen = [items[i] for i in rng.choice(len(items), batch_size)]
        if model.kind == "llm":  # every step other Wyckoff representatives and site orders (augmentation)
            return [cif_lm.token_batch([write_cif(crystal, rng) for crystal in chosen], model.config.max_len)]
        return [flow.crystal_batch(chosen, model.stats, widest)]

    optimizer = _optimizer(learning_rate, steps)
    make_step = cif_lm.make_train_step if model.kind == "llm" else flow.make_train_step
    state = fit(make_step(model.config, optimizer), initial_fit_state(model.params, optimizer), batch, steps,
                jax.random.PRNGKey(seed))
    losses = state.history["train_loss"]
    return replace(model, params=state.params), {"steps": steps, "structures": len(items),
                                                 "learning_rate": learning_rate, "batch_size": batch_size,
                                                 "loss_first": losses[0], "loss_last": losses[-1]}


@functools.lru_cache(maxsize=8)
def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    """One optimiser per setting, so that the jitted train step compiles once per process."""
    return make_optimizer(learning_rate, steps)


def _symmetrised(structure: Structure):
    try:
        return symmetrise(structure)
    except ValueError:  # spglib finds no standard setting: nothing to write
        return None


def _save_whole(model: Generator, target: Path) -> None:
    """Save into a side folder, then rename it to `target`: a kill leaves all or nothing."""
    partial = target.with_name(target.name + ".partial")
    for leftover in (partial, target):
        if leftover.exists():
            shutil.rmtree(leftover)
    model.save(partial)
    os.replace(partial, target)


def _sample_llm(model: Generator, cells: list[Composition], settings: LLMGenerator, key: jax.Array
                ) -> tuple[list[tuple[Composition, Structure]], Counter]:
    """One CIF per prompt cell, each checked against its prompt: (cell, structure) of the
    valid ones, and the rejects by reason."""
    texts = _in_batches(lambda chunk, index: cif_lm.sample(
        model.config, model.params, [prompt(cell) for cell in chunk], jax.random.fold_in(key, index),
        settings.temperature, settings.top_k, constrained=settings.constrained), cells, settings.batch_size)
    kept, rejected = [], Counter()
    for cell, (text, finished) in zip(cells, texts):
        outcome = check_sample(text, finished, cell)
        if isinstance(outcome, Reject):
            rejected[outcome.reason] += 1
        else:
            kept.append((cell, outcome))
    return kept, rejected


def _in_batches(function: Callable[[list, int], list], items: list, size: int) -> list:
    """`function(chunk, index)` over chunks of `size` items, the last padded with copies of
    its first so that every call has one shape (one compilation); the real items' results."""
    size = min(size, len(items))
    out: list = []
    for index, begin in enumerate(range(0, len(items), max(size, 1))):
        chunk = items[begin:begin + size]
        out += function(chunk + chunk[:1] * (size - len(chunk)), index)[:len(chunk)]
    return out
