"""MP snapshots: fetched through mp-api's MPRester from a local fake of the MP API.

The fake answers the requests MPRester really sends (read from mp-api 0.46's client):
  GET /heartbeat (twice while MPRester is constructed, with no API key: once for the
      emmet "version", once for "db_version" and "access_controlled_batch_ids");
  GET /materials/thermo/?chemsys=A,A-B,...&thermo_types=GGA_GGA%2BU&_limit=1000
      &_fields=entries,thermo_type (with the x-api-key header), answered with
      {"data": [thermo docs], "meta": {"total_doc": n}} and paged by _skip/_limit.
Every other path is a 404. A guard makes any connection that is not to 127.0.0.1 fail.
"""

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from urllib.parse import parse_qs, urlsplit

import pytest
from emmet.core.thermo import ThermoDoc
from emmet.core.types.enums import ThermoType
from monty.json import MontyEncoder
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import CompositionEnergyAdjustment, ComputedStructureEntry

from gnome_loop.snapshot.mp import (
    MPFetchError,
    MPSnapshot,
    chemical_systems,
    fetch_mp_entries,
    read_mp_snapshot,
    write_mp_snapshot,
)

API_KEY = "k" * 32  # mp-api rejects keys that are not 32 characters
DB_VERSION = "2025.09.25"
MP2020 = {"@module": "pymatgen.entries.compatibility", "@class": "MaterialsProject2020Compatibility", "@version": None}


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Fail any socket connection that is not to 127.0.0.1: no test may reach the internet."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            raise AssertionError(f"test tried to connect to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _entry(material_id: str, structure: Structure, energy: float, run_type: str = "GGA",
           anion: tuple[str, float] | None = None) -> ComputedStructureEntry:
    """An entry shaped like MP's: id "<material_id>-<run type>", MP2020 anion correction if any."""
    adjustments = []
    if anion:
        name, per_atom = anion
        count = structure.composition["O"]
        adjustments = [CompositionEnergyAdjustment(per_atom, count, uncertainty_per_atom=0.002,
                                                   name=f"MP2020 anion correction ({name})", cls=MP2020)]
    hubbards = {"Co": 3.32, "O": 0.0} if run_type == "GGA+U" else None
    return ComputedStructureEntry(
        structure, energy, entry_id=f"{material_id}-{run_type}", energy_adjustments=adjustments,
        parameters={"run_type": run_type, "is_hubbard": hubbards is not None, "hubbards": hubbards},
        data={"material_id": material_id, "task_id": material_id + "0", "run_type": run_type,
              "oxide_type": anion[0] if anion else "None"},
    )


def _rocksalt(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def thermo_docs() -> list[dict]:
    """MP thermo documents (emmet's ThermoDoc as JSON): a GGA/GGA+U hull of Li-Co-O and an r2SCAN one of Li-O."""
    li = Structure(Lattice.cubic(3.44), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    co = Structure(Lattice.hexagonal(2.5, 4.07), ["Co", "Co"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    o2 = Structure(Lattice.cubic(7.0), ["O", "O"], [[0, 0, 0], [0.174, 0, 0]])
    li2o = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.61), ["O", "Li"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    li2o2 = Structure(Lattice.hexagonal(3.14, 7.65), ["Li"] * 4 + ["O"] * 4,
                      [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75],
                       [1 / 3, 2 / 3, 0.65], [1 / 3, 2 / 3, 0.85], [2 / 3, 1 / 3, 0.15], [2 / 3, 1 / 3, 0.35]])
    lico2 = Structure(Lattice.hexagonal(2.82, 14.05), ["Li", "Co", "O", "O"],
                      [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.26], [0, 0, 0.74]])
    gga = [
        _entry("mp-135", li, -3.8),
        _entry("mp-54", co, -14.2),
        _entry("mp-12957", o2, -9.86),
        _entry("mp-1960", li2o, -57.0, anion=("oxide", -0.687)),
        _entry("mp-841", li2o2, -40.2, anion=("peroxide", -0.465)),
        _entry("mp-19079", _rocksalt(4.26, "Co", "O"), -70.1, "GGA+U", anion=("oxide", -0.687)),
        _entry("mp-22526", lico2, -22.9, "GGA+U", anion=("oxide", -0.687)),
    ]
    r2scan = [_entry("mp-135", li, -4.1, "r2SCAN"), _entry("mp-12957", o2, -12.0, "r2SCAN"),
              _entry("mp-1960", li2o, -70.0, "r2SCAN")]
    docs = ThermoDoc.from_entries(gga, ThermoType.GGA_GGA_U) + ThermoDoc.from_entries(r2scan, ThermoType.R2SCAN)
    return [doc.model_dump(mode="json") for doc in docs]


class FakeMP:
    """A local MP API on a free 127.0.0.1 port that records every request it gets."""

    def __init__(self, docs: list[dict], failing: tuple[str, ...] = ()):
        self.docs = docs
        self.failing = failing  # paths that answer 500
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                params = {key: values[0] for key, values in parse_qs(url.query).items()}
                headers = {key.lower(): value for key, value in self.headers.items()}
                fake.requests.append({"path": url.path, "params": params, "headers": headers})
                status, body = fake.answer(url.path, params)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, path: str, params: dict) -> tuple[int, dict]:
        if path in self.failing:
            return 500, {"detail": "Internal Server Error"}
        if path == "/heartbeat":
            return 200, {"db_version": DB_VERSION, "access_controlled_batch_ids": [], "version": version("emmet-core")}
        if path == "/materials/thermo/":
            # thermo_types is deliberately not applied: the client must drop the r2SCAN docs itself.
            systems = params["chemsys"].split(",")
            fields = params["_fields"].split(",")
            found = [{key: doc[key] for key in fields} for doc in self.docs if doc["chemsys"] in systems]
            skip, limit = int(params.get("_skip", 0)), int(params["_limit"])
            return 200, {"data": found[skip:skip + limit], "meta": {"total_doc": len(found)}}
        return 404, {"detail": "Not Found"}

    def thermo_requests(self) -> list[dict]:
        return [request for request in self.requests if request["path"] == "/materials/thermo/"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_mp(thermo_docs):
    fake = FakeMP(thermo_docs)
    yield fake
    fake.close()


def _as_json(entries: list[ComputedStructureEntry]) -> list[str]:
    return [json.dumps(entry.as_dict(), cls=MontyEncoder, sort_keys=True) for entry in entries]


def test_chemical_systems_up_to_max_elements():
    assert chemical_systems(["O", "Li", "Co", "Li"], 2) == ["Co", "Li", "O", "Co-Li", "Co-O", "Li-O"]
    assert chemical_systems(["Li", "O"]) == ["Li", "O", "Li-O"]
    assert len(chemical_systems(["Li", "Co", "Ni", "O"], 3)) == 4 + 6 + 4
    with pytest.raises(ValueError):
        chemical_systems([])


def test_fetch_sends_key_and_chemsys_keeps_gga_entries(fake_mp, thermo_docs, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", API_KEY)
    snapshot = fetch_mp_entries(["Li", "O", "Co"], max_elements=2, endpoint=fake_mp.endpoint)

    assert [request["path"] for request in fake_mp.requests] == ["/heartbeat", "/heartbeat", "/materials/thermo/"]
    (thermo,) = fake_mp.thermo_requests()
    assert thermo["headers"]["x-api-key"] == API_KEY
    assert thermo["params"]["chemsys"] == "Co,Li,O,Co-Li,Co-O,Li-O"
    assert thermo["params"]["thermo_types"] == "GGA_GGA+U"
    assert set(thermo["params"]["_fields"].split(",")) == {"entries", "thermo_type"}

    ids = [str(entry.entry_id) for entry in snapshot.entries]
    assert ids == sorted(["mp-135-GGA", "mp-12957-GGA", "mp-54-GGA", "mp-1960-GGA", "mp-841-GGA", "mp-19079-GGA+U"])
    assert all(isinstance(entry, ComputedStructureEntry) for entry in snapshot.entries)
    li2o = snapshot.entries[ids.index("mp-1960-GGA")]
    assert li2o.energy == pytest.approx(-57.0 - 0.687 * 4)
    assert li2o.energy_adjustments[0].name == "MP2020 anion correction (oxide)"
    served = next(doc["entries"]["GGA"] for doc in thermo_docs if doc["formula_pretty"] == "Li2O"
                  and doc["thermo_type"] == "GGA_GGA+U")
    assert _as_json([li2o]) == _as_json([ComputedStructureEntry.from_dict(served)])
    assert snapshot.database_version == DB_VERSION
    assert snapshot.endpoint == fake_mp.endpoint + "/"
    assert snapshot.chemsys == ["Co", "Li", "O", "Co-Li", "Co-O", "Li-O"]
    assert snapshot.fetched.endswith("+00:00")


def test_explicit_key_and_whole_space(fake_mp, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    snapshot = fetch_mp_entries(["Li", "Co", "O"], api_key=API_KEY, endpoint=fake_mp.endpoint)
    assert fake_mp.thermo_requests()[0]["headers"]["x-api-key"] == API_KEY
    assert "mp-22526-GGA+U" in {str(entry.entry_id) for entry in snapshot.entries}
    assert len(snapshot.entries) == 7


def test_write_read_round_trip_is_lossless(fake_mp, tmp_path):
    snapshot = fetch_mp_entries(["Li", "O"], api_key=API_KEY, endpoint=fake_mp.endpoint)
    path = tmp_path / "mp.json.gz"
    write_mp_snapshot(snapshot, path)
    assert [p.name for p in tmp_path.iterdir()] == ["mp.json.gz"]  # no temporary file left behind

    with gzip.open(path, "rt") as handle:
        payload = json.load(handle)
    assert set(payload) == {"database_version", "endpoint", "chemsys", "fetched", "entries"}
    assert all(item["@class"] == "ComputedStructureEntry" for item in payload["entries"])

    again = read_mp_snapshot(path)
    assert isinstance(again, MPSnapshot)
    assert (again.database_version, again.endpoint, again.chemsys, again.fetched) == (
        snapshot.database_version, snapshot.endpoint, snapshot.chemsys, snapshot.fetched)
    assert _as_json(again.entries) == _as_json(snapshot.entries)
    assert [entry.energy for entry in again.entries] == [entry.energy for entry in snapshot.entries]


def test_read_rejects_a_plain_entries_list(tmp_path):
    path = tmp_path / "entries.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump([], handle)
    with pytest.raises(ValueError, match="lacks"):
        read_mp_snapshot(path)


def test_missing_key_names_mp_api_key(fake_mp, monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(ValueError, match="MP_API_KEY"):
        fetch_mp_entries(["Li", "O"], endpoint=fake_mp.endpoint)
    assert fake_mp.requests == []


@pytest.mark.parametrize("failing", ["/heartbeat", "/materials/thermo/"])
def test_server_error_names_endpoint_and_step(thermo_docs, failing):
    fake = FakeMP(thermo_docs, failing=(failing,))
    try:
        with pytest.raises(MPFetchError) as caught:
            fetch_mp_entries(["Li", "O"], api_key=API_KEY, endpoint=fake.endpoint)
    finally:
        fake.close()
    message = str(caught.value)
    assert isinstance(caught.value, ConnectionError)
    assert fake.endpoint in message
    assert ("heartbeat" if failing == "/heartbeat" else "querying thermo documents") in message
    assert ("the answer lacks 'version'" if failing == "/heartbeat" else "error status code 500") in message


def test_closed_port_names_endpoint():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(MPFetchError, match=f"{endpoint}.*heartbeat"):
        fetch_mp_entries(["Li", "O"], api_key=API_KEY, endpoint=endpoint)


def test_campaign_fetches_mp_once_and_cli_writes_a_snapshot(fake_mp, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gnome_loop.campaign import Campaign
    from gnome_loop.cli import app
    from gnome_loop.config import parse_config

    monkeypatch.setenv("MP_API_KEY", API_KEY)
    config = parse_config({"rounds": 0, "chemical_space": {"elements": ["Li", "O"]}, "model": {"kind": "linear"},
                           "snapshot": {"source": "mp", "endpoint": fake_mp.endpoint},
                           "oracle": {"kind": "vasp"}})  # MP's energies are the VASP oracle's scale: no re-runs
    campaign = Campaign.create(config, tmp_path / "campaign")
    assert campaign.run().status == "done"
    assert campaign.store.meta("snapshot_version") == f"Materials Project {DB_VERSION}"
    assert campaign.store.meta("scale") == "mp2020"
    assert (tmp_path / "campaign" / "snapshot" / "mp_entries.json.gz").exists()
    ids = {e["id"] for e in campaign.store.entries(with_structure=False)}
    assert "e-mp-1960-GGA" in ids and len(fake_mp.thermo_requests()) == 1

    result = CliRunner().invoke(app, ["snapshot", "--chemsys", "Li-O", "-o", str(tmp_path / "li-o.json.gz"),
                                      "--endpoint", fake_mp.endpoint])
    assert result.exit_code == 0, result.output
    assert len(read_mp_snapshot(tmp_path / "li-o.json.gz").entries) == len(ids)
