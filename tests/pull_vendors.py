"""What the pull adapters' test files share: a simulator and an opened adapter, read and poll
helpers, and the central record a payload maps to. One ``PullVendor`` per adapter::

    MISA = PullVendor("misa", MisaSimulator, MisaAdapter)
    vendor = MISA.fixture()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.contracts import PluginContext, RawRecord
from hub.records import parse_transcript
from hub.store import Store


class PullVendor:
    def __init__(self, name: str, simulator: type, adapter: type, *, simulator_args: tuple[str, ...],
                 defaults: dict[str, Any]):
        self.name, self.simulator, self.adapter = name, simulator, adapter
        self.simulator_args, self.defaults = frozenset(simulator_args), defaults
        self.envelope = {"record_id": f"{name}-test", "event": "NEW", "version": 1,
                         "updated_at": "2025-06-01T07:00:00"}

    def fixture(self) -> Any:
        """A fixture ``start(**simulator kwargs, **adapter settings) -> (sim, adapter)``; every
        simulator and adapter started is closed afterwards."""
        simulator_args = self.simulator_args

        @pytest.fixture
        async def vendor(tmp_path):
            started = []

            async def start(**kwargs):
                kwargs = {**self.defaults, **kwargs}
                sim = self.simulator(**{k: v for k, v in kwargs.items() if k in simulator_args})
                await sim.start()
                adapter = self.make_adapter(sim.adapter_settings(), tmp_path,
                                            **{k: v for k, v in kwargs.items() if k not in simulator_args})
                await adapter.open()
                started.append((sim, adapter))
                return sim, adapter

            yield start
            for sim, adapter in started:
                await adapter.close()
                await sim.stop()
        return vendor

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

    def expected(self, record: dict) -> dict:
        return parse_transcript({**record, **self.envelope}).model_dump()
