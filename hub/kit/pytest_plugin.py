"""The conformance kit as a pytest plugin (entry point ``pytest11``), for vendors' own tests.

A vendor's test file subclasses ``AdapterConformance`` and names its adapter; every kit check
becomes its own test, so a failure names the check::

    from hub import AdapterConformance

    class TestMyVendor(AdapterConformance):
        adapter = "myvendor"

Installed with hocba-hub, this module is loaded by every pytest run; it imports nothing heavy
until a conformance test runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hub import plugins


class AdapterConformance:
    """The acceptance battery for one pull adapter, against its own simulator.

    ``adapter``: the registered name. ``settings_overrides``: over the simulator's settings (the
    kit already retries fast). ``config_path``: a hub YAML whose first adapter of this type
    supplies settings. ``load_only``: entry points to load (default: this adapter's alone, so
    the tests do not depend on what else is installed; ``None`` loads everything).
    """
    adapter: ClassVar[str]
    settings_overrides: ClassVar[dict[str, Any]] = {}
    config_path: ClassVar[str | Path | None] = None
    load_only: ClassVar[tuple[str, ...] | None] = ()

    @pytest.fixture(autouse=True)
    def _only_this_plugin(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        if self.load_only is not None:
            monkeypatch.setenv("HOCBA_HUB_LOAD_PLUGINS", ",".join(self.load_only or (self.adapter,)))
        plugins.reload()
        yield
        monkeypatch.undo()
        plugins.reload()

    def test_registered_by_entry_point(self) -> None:
        info = plugins.adapter_types().get(self.adapter)
        assert info is not None, f"no adapter {self.adapter!r} registered (is the package installed?)"
        assert info.package and info.version, f"{self.adapter}: its distribution has no name or version"

    def test_conformance(self, hocba_check: str) -> None:
        from hub.kit.conformance import assert_conformant

        report = assert_conformant(self.adapter, checks=[hocba_check], config_path=self.config_path,
                                   settings_overrides=dict(self.settings_overrides))
        assert not any(row.skipped for row in report.rows), report.table()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One ``test_conformance`` per kit check, named after it."""
    if "hocba_check" in metafunc.fixturenames:
        from hub.kit.conformance import CHECKS

        metafunc.parametrize("hocba_check", CHECKS)


__all__ = ["AdapterConformance"]
