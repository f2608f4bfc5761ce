"""The plugin's own tests: registration by entry point, then the hub's conformance kit.

Run after ``pip install -e .`` (the entry point exists only in an installed package):
``python -m pytest``. Each kit check is its own test, so a failure names the check.
"""

import pytest
from hocba_quangich.adapter import QuangIchAdapter

from hub import plugins
from hub.kit.conformance import CHECKS, assert_conformant

# The kit injects 5xx, 429 and dropped connections: retry quickly (429 still waits Retry-After).
FAST = {"backoff_seconds": 0.01, "max_backoff_seconds": 5}


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    # Load this plugin's entry point alone: its tests must not depend on what else is installed.
    monkeypatch.setenv("HOCBA_HUB_LOAD_PLUGINS", "quangich")
    plugins.manager.cache_clear()
    plugins.adapter_types.cache_clear()
    yield
    plugins.manager.cache_clear()
    plugins.adapter_types.cache_clear()


def test_registered_through_the_entry_point():
    info = plugins.adapter_types()["quangich"]
    assert info.cls is QuangIchAdapter
    assert info.package == "hocba-quangich" and info.version


@pytest.mark.parametrize("check", CHECKS)
def test_conformance(check):
    report = assert_conformant("quangich", checks=[check], settings_overrides=FAST)
    assert not any(row.skipped for row in report.rows), report.table()
