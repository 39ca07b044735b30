"""Shared fixtures: the reference data beside the checkout (skipped when absent) and
the CI campaign, run once per test session; crystals several modules build."""

from pathlib import Path

import pytest
from pymatgen.core import Structure

from tests.helpers import CI_CONFIG, SHARED_DATA, layered_licoo2, spinel_mgal2o4


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` beside the checkout (or GNOME_LOOP_DATA); tests that need it skip on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (only present beside the dev checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def emt_campaign(tmp_path_factory) -> Path:
    """The CI EMT campaign (experiments/ci_emt), run once to the end without interruption."""
    from gnome_loop.campaign import Campaign
    from gnome_loop.config import load_config

    directory = tmp_path_factory.mktemp("emt") / "campaign"
    outcome = Campaign.create(load_config(CI_CONFIG), directory).run()
    assert outcome.status == "done"
    return directory


@pytest.fixture(scope="session")
def spinel() -> Structure:
    return spinel_mgal2o4()


@pytest.fixture(scope="session")
def layered() -> Structure:
    return layered_licoo2()
