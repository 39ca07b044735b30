"""The convex hull: agreement with Materials Project, incremental updates, refusals."""

import gzip
import json
from functools import lru_cache
from pathlib import Path

import pytest
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gnome_loop.hull import STABLE_TOL, Hull

#: Elemental energies, eV/atom, of the synthetic Li-Na-O entries.
REFERENCE = {"Li": -1.9, "Na": -1.3, "O": -4.95}


def make_entry(formula: str, e_form_per_atom: float, entry_id: str, **data) -> ComputedEntry:
    """An entry whose formation energy per atom against `REFERENCE` is `e_form_per_atom`."""
    composition = Composition(formula)
    energy = sum(REFERENCE[el.symbol] * amount for el, amount in composition.items())
    return ComputedEntry(composition, energy + e_form_per_atom * composition.num_atoms, entry_id=entry_id, data=data)


def li_na_o_entries() -> list[ComputedEntry]:
    """Li-O: Li2O at -2.0 eV/atom is the only compound vertex, LiO at -1.4 lies 0.1 above
    the Li2O-O tie line (-1.5 at x_O = 1/2). Na-O: Na2O on the hull."""
    return [
        make_entry("Li", 0.0, "li"),
        make_entry("O2", 0.0, "o"),
        make_entry("Na", 0.0, "na"),
        make_entry("Li2O", -2.0, "li2o"),
        make_entry("Li2O2", -1.4, "lio-a"),
        make_entry("Na2O", -1.5, "na2o"),
    ]


@lru_cache(maxsize=1)
def load_mp(path: Path) -> tuple[list[ComputedStructureEntry], dict[str, dict]]:
    """Entries of an MP chemical-system file and MP's own fields (top-level keys
    `e_above_hull`, `is_stable`, `e_form_per_atom` of each JSON dict) by entry id."""
    with gzip.open(path, "rt") as handle:
        raw = json.load(handle)
    entries = [ComputedStructureEntry.from_dict(item) for item in raw]
    return entries, {item["entry_id"]: item for item in raw}


@pytest.fixture
def li_co_ni_o(shared_data):
    return load_mp(shared_data / "mp_chemsys" / "Li-Co-Ni-O.json.gz")


def test_reproduces_materials_project_hull(li_co_ni_o):
    entries, mp = li_co_ni_o
    hull = Hull(entries)
    e_hull = hull.all_e_above_hull()
    assert len(e_hull) == 775
    assert max(abs(e_hull[entry_id] - item["e_above_hull"]) for entry_id, item in mp.items()) < 1e-6
    mp_stable = {entry_id for entry_id, item in mp.items() if item["is_stable"]}
    assert len(mp_stable) == 24
    assert hull.stable_ids() == mp_stable
    assert max(abs(hull.formation_energy_per_atom(i) - item["e_form_per_atom"]) for i, item in mp.items()) < 1e-6
    # one diagram per chemical system that holds entries (Li-Co-Ni has none), each built once
    assert hull.pd_builds <= 15
    builds = hull.pd_builds
    hull.all_e_above_hull()
    assert hull.pd_builds == builds


def test_stable_entry_decomposes_into_itself_and_unstable_into_hull_phases():
    hull = Hull(li_na_o_entries())
    assert hull.decomposition("li2o") == {"li2o": 1.0}
    products = hull.decomposition("lio-a")
    assert set(products) == {"li2o", "o"}
    assert sum(products.values()) == pytest.approx(1.0)
    assert hull.e_above_hull("lio-a") == pytest.approx(0.1)
    assert hull.formation_energy_per_atom("li2o") == pytest.approx(-2.0)


def test_adding_an_entry_below_the_hull_makes_it_stable_and_pushes_others_up():
    hull = Hull(li_na_o_entries())
    assert hull.stable_ids() == {"li", "o", "na", "li2o", "na2o"}
    builds = hull.pd_builds
    assert builds == 5  # Li, O, Na, Li-O, Na-O

    hull.add([make_entry("Li2O2", -1.8, "lio-b")])
    assert hull.e_above_hull("lio-b") == 0.0
    assert hull.e_above_hull("lio-a") == pytest.approx(0.4)  # was 0.1 above the old hull
    assert hull.stable_ids() == {"li", "o", "na", "li2o", "na2o", "lio-b"}
    assert hull.pd_builds == builds + 1  # only Li-O was rebuilt

    hull.add([make_entry("O2", 0.2, "o-high")])  # an elemental entry touches every O system
    hull.all_e_above_hull()
    assert hull.pd_builds == builds + 1 + 3  # O, Li-O, Na-O


def test_replacing_an_id_uses_the_new_energy():
    hull = Hull(li_na_o_entries())
    assert hull.e_above_hull("lio-a") == pytest.approx(0.1)
    hull.add([make_entry("Li2O2", -1.45, "lio-a")])
    assert len(hull) == 6
    assert hull.e_above_hull("lio-a") == pytest.approx(0.05)


def test_decomposition_energy_is_distance_to_the_hull_of_other_compositions():
    hull = Hull(li_na_o_entries() + [make_entry("Li2O2", -1.8, "lio-b")])
    # without Li2O2 polymorphs the hull at x_O = 1/2 is -1.5 eV/atom
    assert hull.decomposition_energy("lio-b") == pytest.approx(-0.3, abs=1e-6)
    # a polymorph is measured against the other compositions, not against lio-b
    assert hull.decomposition_energy("lio-a") == pytest.approx(0.1, abs=1e-6)
    assert hull.decomposition_energy("o") == 0.0


def test_hypothetical_entry_below_the_hull_is_negative():
    hull = Hull(li_na_o_entries())
    below = make_entry("Li2O2", -1.6, "candidate")
    assert hull.e_hull_of(below.composition, below.energy) == pytest.approx(-0.1)
    above = make_entry("Li4O2", -1.9, "candidate")
    assert hull.e_hull_of("Li4O2", above.energy) == pytest.approx(0.1)
    assert "candidate" not in hull


def test_missing_elemental_reference_gives_none():
    entries = [make_entry("Li", 0.0, "li"), make_entry("Li2O", -2.0, "li2o")]
    hull = Hull(entries)
    assert hull.missing_elements("Li-O") == ["O"]
    assert hull.missing_elements(Composition("Li2O")) == ["O"]
    assert hull.e_above_hull("li2o") is None
    assert hull.formation_energy_per_atom("li2o") is None
    assert hull.decomposition("li2o") is None
    assert hull.e_hull_of("Li2O", -15.0) is None
    assert hull.e_above_hull("li") == 0.0
    assert hull.stable_ids() == {"li"}
    assert hull.all_e_above_hull() == {"li": 0.0, "li2o": None}


def test_mixed_energy_scales_are_refused():
    hull = Hull([make_entry("Li", 0.0, "li", scale="chgnet-mp2020")])
    assert hull.scale == "chgnet-mp2020"
    with pytest.raises(ValueError, match="emt-li2o"):
        hull.add([make_entry("O2", 0.0, "o", scale="chgnet-mp2020"), make_entry("Li2O", -2.0, "emt-li2o", scale="emt")])
    assert len(hull) == 1  # nothing of the refused batch was added

    fresh = Hull()
    with pytest.raises(ValueError, match="entry b has energy scale 'emt'"):
        fresh.add([make_entry("Li", 0.0, "a", scale="chgnet-mp2020"), make_entry("O2", 0.0, "b", scale="emt")])
    assert fresh.scale is None and len(fresh) == 0

    with pytest.raises(ValueError, match="entry li has energy scale 'chgnet-mp2020'"):
        Hull([make_entry("Li", 0.0, "li", scale="chgnet-mp2020")], scale="mp2020")


def test_stable_tolerance():
    hull = Hull(li_na_o_entries() + [make_entry("Li2O", -2.0 + 0.5 * STABLE_TOL, "li2o-b")])
    assert "li2o-b" in hull.stable_ids()
    assert "li2o-b" not in hull.stable_ids(tol=0.0)
