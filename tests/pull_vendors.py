"""What the pull adapters' test files share: a simulator and an opened adapter, read and poll
helpers, the central record a payload maps to, and what differs between the vendors where their
behaviour is the same (which path a fault strikes first, which setting is the credential, how an
error is worded; ``refused`` is a pattern). One ``PullVendor`` per adapter, used by its own test file and by
``test_pull_adapters.py``, which runs the behaviour they share against all three::

    from pull_vendors import MISA
    vendor = MISA.fixture()
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.misa import simulator as misa_sim
from adapters.misa.adapter import MisaAdapter
from adapters.viettel import simulator as viettel_sim
from adapters.viettel.adapter import ViettelAdapter
from adapters.vnpt import simulator as vnpt_sim
from adapters.vnpt.adapter import VnptAdapter
from hub.contracts import PluginContext, RawRecord
from hub.kit.synthetic import nfd
from hub.records import field_errors, parse_transcript
from hub.store import Store


class PullVendor:
    """One pull adapter and its simulator, as the tests drive them.

    ``records_path``: where the records are read. ``faulted_path``: the first path a read calls
    that the fault switches strike (a vendor whose token endpoint fails like its data does names
    that one). ``credential``: the setting that is the secret. ``truncated`` and ``refused``: how
    the adapter words a cut-off page and a credential the server refuses. ``settings``: the
    least that makes valid settings.
    """

    def __init__(self, name: str, simulator: type, adapter: type, *, simulator_args: tuple[str, ...],
                 defaults: dict[str, Any], records_path: str, faulted_path: str, credential: str,
                 truncated: str, refused: str, settings: dict[str, str]):
        self.name, self.simulator, self.adapter = name, simulator, adapter
        self.simulator_args, self.defaults = frozenset(simulator_args), defaults
        self.records_path, self.faulted_path, self.credential = records_path, faulted_path, credential
        self.truncated, self.refused, self.settings = truncated, refused, settings
        self.envelope = {"record_id": f"{name}-test", "event": "NEW", "version": 1,
                         "updated_at": "2025-06-01T07:00:00"}

    def __repr__(self) -> str:
        return self.name  # the test id of a parametrised test

    @contextlib.asynccontextmanager
    async def starting(self, tmp_path: Path) -> AsyncIterator[Any]:
        """``start(**simulator kwargs, **adapter settings) -> (sim, adapter)``; every simulator and
        adapter started is closed on the way out."""
        started = []

        async def start(**kwargs):
            kwargs = {**self.defaults, **kwargs}
            sim = self.simulator(**{k: v for k, v in kwargs.items() if k in self.simulator_args})
            await sim.start()
            adapter = self.make_adapter(sim.adapter_settings(), tmp_path,
                                        **{k: v for k, v in kwargs.items() if k not in self.simulator_args})
            await adapter.open()
            started.append((sim, adapter))
            return sim, adapter

        try:
            yield start
        finally:
            for sim, adapter in started:
                await adapter.close()
                await sim.stop()

    def fixture(self) -> Any:
        """``starting`` as a fixture named ``vendor``."""

        @pytest.fixture
        async def vendor(tmp_path):
            async with self.starting(tmp_path) as start:
                yield start
        return vendor

    def statuses(self, sim: Any, path: str) -> list[int]:
        """The statuses the simulator answered on ``path`` (any query), in order (0: dropped)."""
        return [status for _, logged, status in sim.log if logged.split("?")[0] == path]

    def make_adapter(self, base: dict, tmp_path: Path, **settings: Any) -> Any:
        # Tiny backoff so a test waiting a second can only be waiting for Retry-After.
        values = {**base, "backoff_seconds": 0.001, "max_backoff_seconds": 5.0, **settings}
        return self.adapter(self.adapter.Settings(**values), PluginContext(f"{self.name}-test", tmp_path))

    @staticmethod
    async def read(adapter: Any, cursor: str | None = None) -> tuple[list, list]:
        pages = [page async for page in adapter.fetch(cursor)]
        return pages, [r for p in pages for r in p.records]

    async def poll(self, adapter: Any, store: Store) -> Exception | None:
        """One poll as the hub runs it: each page and its cursor committed together."""
        try:
            async for page in adapter.fetch(store.cursor(self.name)):
                store.receive(self.name, page.records, page.cursor, save_cursor=True)
        except adapter.Error as exc:
            return exc
        return None

    def central(self, adapter: Any, raw: RawRecord) -> dict:
        return parse_transcript({**adapter.normalize(raw), **self.envelope}).model_dump()

    def broken_on_purpose(self, sim: Any, adapter: Any, raw: RawRecord) -> bool:
        """Whether ``raw`` is one the simulator broke on purpose; if so, the central format must
        refuse it naming the very field that was broken."""
        if raw.source_id not in sim.defects:
            return False
        kind, field = sim.defects[raw.source_id]
        with pytest.raises(ValidationError) as err:
            self.central(adapter, raw)
        assert field in [line.split(":")[0] for line in field_errors(err.value)], (kind, field_errors(err.value))
        return True

    def name_stays_nfd(self, adapter: Any, raw: RawRecord, source: dict) -> None:
        """The student's name arrives decomposed (NFD) as the vendor stored it, and the central
        record has it composed (NFC)."""
        name = source["student"]["full_name"]
        assert nfd(name) != name and nfd(name) in raw.payload.decode("utf-8")
        assert self.central(adapter, raw)["student"]["full_name"] == unicodedata.normalize("NFC", name)

    def expected(self, record: dict) -> dict:
        return parse_transcript({**record, **self.envelope}).model_dump()


MISA = PullVendor("misa", misa_sim.MisaSimulator, MisaAdapter, simulator_args=("records", "invalid", "seed", "page_size"),
                  defaults={"page_size": 4}, records_path=misa_sim.RECORDS_PATH, faulted_path=misa_sim.RECORDS_PATH,
                  credential="api_secret", truncated="truncated JSON", refused="INVALID_SIGNATURE.*check api_secret",
                  settings={"base_url": "https://emis.example.vn", "api_key": "sogd-01", "api_secret": "s" * 32})
VIETTEL = PullVendor("viettel", viettel_sim.ViettelSimulator, ViettelAdapter,
                     simulator_args=("records", "invalid", "seed", "per_timestamp", "page_size"),
                     defaults={"per_timestamp": 3, "page_size": 4}, records_path=viettel_sim.RECORDS_PATH,
                     faulted_path=viettel_sim.RECORDS_PATH, credential="api_key",
                     truncated="not well-formed XML or is truncated", refused="^API key refused: INVALID_API_KEY",
                     settings={"base_url": "https://smas.example.vn", "api_key": "k"})
VNPT = PullVendor("vnpt", vnpt_sim.VnptSimulator, VnptAdapter, simulator_args=("records", "invalid", "seed", "per_timestamp"),
                  defaults={"per_timestamp": 3}, records_path=vnpt_sim.RECORDS_PATH, faulted_path=vnpt_sim.TOKEN_PATH,
                  credential="client_secret", truncated="truncated JSON", refused="^token rejected: invalid_client",
                  settings={"base_url": "https://hocba.example.vn", "client_id": "id", "client_secret": "s"})
PULL_VENDORS = (MISA, VIETTEL, VNPT)
