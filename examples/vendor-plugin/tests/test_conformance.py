"""The plugin's own tests: the hub's conformance kit, through its pytest plugin.

Run after ``pip install -e .`` (the entry point exists only in an installed package):
``python -m pytest``. Registration by entry point is the first test, then one test per kit check.
"""

from hub import AdapterConformance


class TestQuangIch(AdapterConformance):
    adapter = "quangich"
    # The kit injects 5xx, 429 and dropped connections: retry quickly (429 still waits Retry-After).
    settings_overrides = {"backoff_seconds": 0.01, "max_backoff_seconds": 5}
