"""The campaign report: every figure renders as a real image, report.md links them all,
discoveries are marked on the phase diagrams, and bad chemical systems fail clearly."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pymatgen.entries.computed_entries import ComputedEntry

from gnome_loop.campaign import Campaign
from gnome_loop.report import (
    cumulative_hit_rates,
    ehull_histogram_figure,
    phase_diagram_figure,
    system_entries,
    top_systems,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def campaign(emt_campaign) -> Campaign:
    """The CI campaign of conftest, run once per session."""
    return Campaign(emt_campaign)


def assert_image(path: Path) -> None:
    """A PNG of at least 300 x 300 pixels that is not one flat colour."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        width, height = image.size
        grey = np.asarray(image.convert("L"), dtype=float)
    assert width >= 300 and height >= 300, (path, image.size)
    assert grey.std() > 5, f"{path} looks blank"


def test_report_renders_every_figure_and_links_them(campaign, tmp_path):
    paths = write_report(campaign, tmp_path / "report")
    page = paths[-1]
    assert page.name == "report.md"
    pngs = paths[:-1]
    names = {p.name for p in pngs}
    assert {"hit_rate.png", "ehull_histogram.png", "stable_count.png"} <= names
    # the campaign finds stable phases, so the busiest systems get a phase diagram
    assert 1 <= sum(name.startswith("phase_diagram_") for name in names) <= 3
    for path in pngs:
        assert_image(path)
    text = page.read_text()
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == [p.name for p in pngs]
    rounds = [row["round"] for row in campaign.round_table() if row["round"] > 0]
    for round_ in rounds:
        assert re.search(rf"^\| {round_} \| \d+ \| \d+ \|", text, re.MULTILINE)


def test_requested_phase_diagram(campaign, tmp_path):
    paths = write_report(campaign, tmp_path, ["Cu-Au"])
    assert tmp_path / "phase_diagram_Cu-Au.png" in paths
    assert_image(tmp_path / "phase_diagram_Cu-Au.png")
    assert "(phase_diagram_Cu-Au.png)" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("chemsys, reason", [
    ("Xx-Cu", "unknown element"),
    ("Cu-Fe", "no elemental reference for Fe"),
    ("Cu", "2 or 3 distinct elements"),
])
def test_bad_chemsys_raises_before_writing(campaign, tmp_path, chemsys, reason):
    with pytest.raises(ValueError, match=f"'{chemsys}'.*{reason}"):
        write_report(campaign, tmp_path / "report", [chemsys])
    assert not (tmp_path / "report").exists()


def test_figures_from_plain_data(tmp_path):
    """No campaign: the histogram and a phase diagram with one discovery marked."""
    assert cumulative_hit_rates([8, 8, 4], [1, 3, 0]) == [0.125, 0.25, 0.2]
    figure = ehull_histogram_figure({"substitution": [0.0, 0.012, 0.05, 0.9], "saps": [0.02, 0.03]})
    figure.savefig(tmp_path / "hist.png", dpi=100)
    assert_image(tmp_path / "hist.png")
    assert "substitution: 4 evaluated, 1 stable, 1 > 300" in figure.axes[0].get_legend_handles_labels()[1]

    entries = [ComputedEntry("Cu", -3.0, entry_id="cu"), ComputedEntry("Au", -2.0, entry_id="au"),
               ComputedEntry("Cu3Au", -11.6, entry_id="known"), ComputedEntry("CuAu", -5.3, entry_id="new"),
               ComputedEntry("CuAu3", -9.0, entry_id="above")]
    elements, inside = system_entries(entries, "Cu-Au")
    assert top_systems(entries, {"new"}) == ["Au-Cu"]
    figure = phase_diagram_figure(inside, elements, discoveries={"new"})
    figure.savefig(tmp_path / "pd.png", dpi=100)
    assert_image(tmp_path / "pd.png")
    ax = figure.axes[0]
    marked = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert marked["stable, discovered by the campaign"] == [[0.5, pytest.approx(-0.15)]]
    assert len(marked["stable phase"]) == 3
    assert len(marked["unstable, < 100 meV/atom above the hull"]) == 1
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "Cu-Au phase diagram"


def test_report_command_writes_into_the_campaign(emt_campaign):
    from typer.testing import CliRunner

    from gnome_loop.cli import app

    result = CliRunner().invoke(app, ["report", str(emt_campaign), "--chemsys", "Cu-Au"])
    assert result.exit_code == 0, result.output
    folder = emt_campaign / "report"
    assert (folder / "report.md").exists() and (folder / "phase_diagram_Cu-Au.png").exists()
    assert_image(folder / "hit_rate.png")
    bad = CliRunner().invoke(app, ["report", str(emt_campaign), "--chemsys", "Xx-Cu"])
    assert bad.exit_code == 2 and "Xx" in bad.output
