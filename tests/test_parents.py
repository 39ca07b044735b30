"""Parents of substitution and SAPS: known phases near the hull only, and structure files
of any elements that give candidates inside the space only; bad paths fail at init."""

import zipfile
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Lattice, Structure

from gnome_loop.campaign import Campaign
from gnome_loop.config import ConfigError, SubstitutionGenerator, parse_config
from gnome_loop.generate.parents import gather, pooled_parents, read_parents, sources
from gnome_loop.generate.plausible import NOT_BALANCED, charge_problem
from gnome_loop.generate.saps import saps
from gnome_loop.generate.substitution import substitute
from gnome_loop.structures import ChemicalSpace, structure_from_json, validate_structure

SPACE = ["Li", "Co", "Ni", "O"]
CI_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "ci_emt" / "config.yaml"


def _rocksalt(cation: str, anion: str, a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5] * 3])


@pytest.fixture
def outside_zip(tmp_path):
    """CIFs of crystals outside the Li-Co-Ni-O space (and one inside, one element)."""
    path = tmp_path / "parents.zip"
    crystals = {
        "NaCl": _rocksalt("Na", "Cl", 5.64), "MgO": _rocksalt("Mg", "O", 4.21), "KBr": _rocksalt("K", "Br", 6.6),
        "CaF2": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Ca", "F"], [[0, 0, 0], [0.25] * 3]),
        "Cu3Au": Structure(Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
                           [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
        "NiO": _rocksalt("Ni", "O", 4.17), "W": Structure(Lattice.cubic(3.16), ["W", "W"], [[0, 0, 0], [0.5] * 3]),
    }
    with zipfile.ZipFile(path, "w") as handle:
        for name, structure in crystals.items():
            handle.writestr(f"{name}.cif", structure.to(fmt="cif"))
    return path


def _in_space(candidates, space) -> None:
    assert candidates
    for candidate in candidates:
        assert {el.symbol for el in candidate.structure.composition} <= set(space)
        assert validate_structure(candidate.structure, ChemicalSpace(space, 3, 20)) is None


def test_a_parent_far_above_the_hull_is_not_used():
    stable, far = _rocksalt("Li", "O", 4.6).get_primitive_structure(), _rocksalt("Co", "O", 4.26)
    known = [("stable", stable, 0.0), ("near", stable.copy(), 0.08), ("far", far, 0.5), ("unjudged", far, None)]
    kept = gather(["known"], known, 0.1, ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 10, images=False)
    assert [key for key, _ in kept] == ["stable", "near"]
    candidates = substitute(kept, SPACE, {"Li2O"})
    assert candidates and all(c.parent_ids[0] in ("stable", "near") for c in candidates)
    assert [key for key, _ in gather(["known"], known, 1.0, ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 10, False)] == [
        "stable", "near", "far"]  # the threshold is a setting; unjudged phases never count


def test_the_campaign_takes_its_parents_from_the_entries_near_its_hull(emt_campaign):
    campaign = Campaign(emt_campaign)
    _, known = campaign.context.known_structures()
    settings = campaign.config.generators.substitution
    parents = pooled_parents(known, campaign.config.chemical_space.space(),
                             [settings.model_copy(update={"parents": ["known"]})], images=False)
    near = {key for key, _, ehull in known if ehull is not None and ehull <= settings.parents_max_ehull}
    assert {key for key, _ in parents} == near and 0 < len(near) < len(known)


def test_parents_from_a_file_outside_the_space_give_in_space_candidates_only(outside_zip):
    outside = read_parents(str(outside_zip), ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 10)
    ids = [key.split(":")[1] for key, _ in outside]
    assert "NiO.cif" not in ids and "W.cif" not in ids  # inside the space / an element: not outside parents
    assert {"NaCl.cif", "MgO.cif", "Cu3Au.cif"} <= set(ids)

    candidates = substitute(outside, SPACE, {"NiO"})
    _in_space(candidates, SPACE)
    assert {"CoO", "Li2O"} & {c.structure.composition.reduced_formula for c in candidates}
    from_cu3au = [c for c in candidates if c.parent_ids[0].endswith("Cu3Au.cif")]
    assert from_cu3au and all("O" not in c.structure.composition for c in from_cu3au)  # metals stay metals

    parents = gather(["known", str(outside_zip)], [], 0.1, ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 10, images=True)
    images = [(key, s) for key, s in parents if ">" in key]
    assert images and all({el.symbol for el in s.composition} <= set(SPACE) for _, s in images)
    _in_space(saps(parents, SPACE, set(), max_per_parent=10), SPACE)


def test_outside_parents_are_capped_most_likely_first(outside_zip):
    every = read_parents(str(outside_zip), ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 100)
    top = read_parents(str(outside_zip), ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 2)
    assert len(top) == 2 < len(every) and [key for key, _ in top] == [key for key, _ in every[:2]]
    assert read_parents(str(outside_zip), ChemicalSpace(SPACE, 3, 20), 0.99, -5.0, 100) == ()


def test_parents_from_the_mp_table_give_in_space_candidates_only(shared_data):
    table = shared_data / "mp37k" / "mp37k_eform.csv.gz"
    outside = read_parents(str(table), ChemicalSpace(SPACE, 3, 20), 0.001, -5.0, 30)
    assert len(outside) == 30
    assert all(not {el.symbol for el in s.composition} <= set(SPACE) for _, s in outside)
    _in_space(substitute(outside, SPACE, set()), SPACE)


def test_parents_setting_takes_lists_and_the_old_spellings():
    assert sources("known") == ["known"] and sources("known+prototypes") == ["known", "prototypes"]
    assert SubstitutionGenerator().parents == "known+prototypes" and SubstitutionGenerator().parents_max_ehull == 0.1
    config = parse_config({"chemical_space": {"elements": SPACE},
                           "generators": {"saps": {"parents": ["known", "prototypes", "x.zip"]}}})
    assert sources(config.generators.saps.parents) == ["known", "prototypes", "x.zip"]
    for bad, words in (("known+files", "not a source list"), ([], "at least one"), (["known", "known"], "twice")):
        with pytest.raises(ConfigError, match=words):
            parse_config({"chemical_space": {"elements": SPACE}, "generators": {"substitution": {"parents": bad}}})


def test_a_bad_parents_path_is_a_clear_config_error_at_init(tmp_path, outside_zip):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("no structures here")
    for path, words in ((tmp_path / "missing.zip", "no file or folder"), (tmp_path / "notes", "no structure file")):
        config = parse_config({"chemical_space": {"elements": SPACE},
                               "generators": {"saps": {"parents": ["known", str(path)]}}})
        with pytest.raises(ConfigError, match=f"generators.saps.parents: .*{path.name}.*{words}"):
            Campaign.create(config, tmp_path / "c")
        assert not (tmp_path / "c").exists()
    config = parse_config({"chemical_space": {"elements": SPACE},
                           "generators": {"substitution": {"parents": ["known", str(outside_zip)]}}})
    campaign = Campaign.create(config, tmp_path / "ok")
    assert campaign.config.generators.substitution.parents == ["known", str(outside_zip.resolve())]


def test_a_round_in_an_oxide_space_counts_the_implausible_candidates_per_generator(tmp_path):
    """Cu2O-type templates give Al2O (no charge-balanced guess): refused, counted, shown in `status`."""
    data = yaml.safe_load(CI_CONFIG.read_text())
    data.update(rounds=1, selection={**data["selection"], "budget": 2})
    data["chemical_space"]["elements"] = ["Al", "Au", "Cu", "O"]
    data["generators"] = {"substitution": {"max_candidates": 20}, "saps": {"max_candidates": 20}}
    campaign = Campaign.create(parse_config(data), tmp_path / "c")
    campaign.run()
    first = campaign.round_table()[1]
    assert first["rejected_by_generator"]["substitution"][NOT_BALANCED] > 0
    for row in campaign.store.candidates(round_=1):
        assert charge_problem(structure_from_json(row["structure"])) is None
