"""The conformance kit (hub.kit.conformance): vnpt passes it, the example plugin passes it once installed
by its entry point, and every check fails for an adapter broken in the way that check looks for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Any

import pytest
import setuptools
from conftest import only_plugins
from aiohttp import web
from pydantic import ConfigDict, model_validator
from yarl import URL

from adapters.vnpt.adapter import VnptAdapter, VnptError, VnptSettings
from adapters.vnpt.simulator import VnptSimulator
from hub.contracts import Health, Page, PluginSettings, RawRecord, Simulator
from hub.kit.conformance import (
    CHECKS,
    ConformanceError,
    assert_conformant,
    run_conformance_async,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vendor-plugin"
# Retries in microseconds: a test that waits can only be waiting for Retry-After.
FAST = {"backoff_seconds": 0.001, "max_backoff_seconds": 5}


@pytest.fixture
def only_vnpt():
    # Resolve names from this entry point alone: the kit's tests must not depend on other plugins.
    with only_plugins("vnpt"):
        yield


# --- vnpt passes ---------------------------------------------------------------------------------

async def test_vnpt_passes_every_check(only_vnpt):
    report = await run_conformance_async("vnpt", settings_overrides=FAST)
    assert report.ok, report.table()
    assert [r.name for r in report.rows] == list(CHECKS)
    assert not [r.name for r in report.rows if r.skipped]
    table = report.table()
    assert table.splitlines()[-1] == "vnpt is conformant: every check passed (19 run, 0 skipped)"
    assert "FAIL" not in table and table.count("PASS") == len(CHECKS)


@pytest.mark.parametrize("adapter, skipped", [
    ("viettel", set()),
    ("misa", set()),
    # A watched folder: no network faults, no paging, no credentials, no record to change.
    ("spreadsheet", {"check.outage", "check.credentials", "read.incremental", "paging.page_size",
                     "paging.3xpage_size+1", "auth.expiry", "faults.5xx", "faults.429", "faults.dropped"}),
])
async def test_every_builtin_source_passes_the_kit(adapter, skipped):
    overrides = {} if adapter == "spreadsheet" else FAST
    report = await run_conformance_async(adapter, settings_overrides=overrides)
    assert report.ok, report.table()
    assert {r.name for r in report.rows if r.skipped} == skipped, report.table()


# --- adapters broken on purpose: each check must be able to fail --------------------------------

class DropsLastOfPage(VnptAdapter):
    """Loses the last record of every page: the off-by-one of a careless slice."""

    async def fetch(self, cursor):
        async for page in super().fetch(cursor):
            yield Page(page.records[:-1], page.cursor)


class CrashesOnEmptyFeed(VnptAdapter):
    """Reads the first record of a page without asking whether there is one."""

    async def fetch(self, cursor):
        async for page in super().fetch(cursor):
            page.records[0]  # IndexError on an empty page: the bug this adapter carries
            yield page


class GathersAllPages(VnptAdapter):
    """Hands the hub one Page of everything: nothing is committed until the whole pull is read."""

    async def fetch(self, cursor):
        pages = [page async for page in super().fetch(cursor)]
        yield Page([r for p in pages for r in p.records], pages[-1].cursor)


class IgnoresCursor(VnptAdapter):
    """Re-reads everything on every poll."""

    async def fetch(self, cursor):
        async for page in super().fetch(None):
            yield page


class UnstableIds(VnptAdapter):
    """Makes up ids per read (as an adapter keying on a row number or a fetch time would)."""

    async def fetch(self, cursor):
        nonce = uuid.uuid4().hex[:6]
        async for page in super().fetch(cursor):
            yield Page([RawRecord(f"{r.source_id}-{nonce}", r.payload, r.content_type, r.updated_at, r.deleted)
                        for r in page.records], page.cursor)


class ForgetsTokenRenewal(VnptAdapter):
    """Gets a token once and never again: a refused token ends the read."""

    async def _get(self, path, params, *, attempts=None):
        url = URL(self._base + path).with_query(params)
        if self._token is None:
            await self._fetch_token(attempts)
        status, content_type, body = await self._send(
            "GET", url, attempts=attempts, headers={"Authorization": f"Bearer {self._token}"})
        if status != 200:
            raise VnptError(f"GET {url} answered HTTP {status}")
        return self._json("GET", str(url), content_type, body)


class IgnoresRetryAfter(VnptAdapter):
    """Retries a 429 at once, hammering a server that asked it to wait."""

    wait_override = staticmethod(lambda retry_state: 0.001)


class AlwaysHealthy(VnptAdapter):
    async def check(self) -> Health:
        return Health(True, "fine")


class NeverHealthy(VnptAdapter):
    async def check(self) -> Health:
        return Health(False, "down")


class LeaksTheSecret(VnptAdapter):
    """Helpfully puts the secret it sent into the reason."""

    async def check(self) -> Health:
        health = await super().check()
        if health.ok:
            return health
        return Health(False, f"{health.detail} (sent client_secret={self.settings.client_secret.get_secret_value()})")


class RaisesFromCheck(VnptAdapter):
    async def check(self) -> Health:
        health = await super().check()
        if not health.ok:
            raise VnptError(health.detail)
        return health


class SilentDefaults(VnptAdapter):
    """"Fixes" a malformed personal id by dropping it: an invalid record passes as valid."""

    def normalize(self, raw):
        data = super().normalize(raw)
        pid = data["student"].get("personal_id") or ""
        if not (pid.isdigit() and len(pid) == 12):
            data["student"].pop("personal_id", None)
        return data


class BreaksOnSecondary(VnptAdapter):
    """An AttributeError on secondary records: the hub's normalise stage would crash, not quarantine."""

    def normalize(self, raw):
        data = super().normalize(raw)
        if "learning" in data:
            data["learning"].year   # noqa: B018 - the bug: attribute access on a dict
        return data


class Lossy(VnptAdapter):
    """Forgets to map one optional field: every record still validates, the data is gone."""

    def normalize(self, raw):
        data = super().normalize(raw)
        data["student"].pop("ethnicity", None)
        return data


class LooseSettings(PluginSettings):
    """Defaults for what must be configured, an untyped field, unknown keys ignored, a plain-str secret."""
    model_config = ConfigDict(extra="ignore")
    base_url: str = "http://127.0.0.1:9"
    client_id: str = "id"
    client_secret: str = "secret"
    page_size: Any = 100


class Loose(VnptAdapter):
    Settings = LooseSettings


class UnnamedSettings(VnptSettings):
    @model_validator(mode="before")
    @classmethod
    def _something(cls, data):
        if not data:
            raise ValueError("nothing configured")   # an error with no field to point at
        return data


class Unnamed(VnptAdapter):
    Settings = UnnamedSettings


class DeafSimulator(VnptSimulator):
    """Serves the contract but ignores every fault switch."""

    @web.middleware
    async def _faults_middleware(self, request, handler):
        return await handler(request)


class NoUpdatesNoTokens(VnptSimulator):
    """A simulator that can neither change a record nor revoke tokens."""
    update = None
    expire_tokens = Simulator.expire_tokens


BROKEN = [
    pytest.param(DropsLastOfPage, {}, None, ["read", "paging", "auth", "faults", "normalize"],
                 {"read.full", "read.incremental", "read.stable_ids", "paging.1", "paging.page_size",
                  "paging.3xpage_size+1", "auth.expiry", "faults.5xx", "faults.429", "faults.dropped",
                  "normalize.valid_or_named", "normalize.round_trip"}, id="drops-last-record-of-each-page"),
    pytest.param(CrashesOnEmptyFeed, {}, None, ["paging"], {"paging.0"}, id="crashes-on-an-empty-feed"),
    pytest.param(GathersAllPages, {}, None, ["paging"], {"paging.3xpage_size+1"}, id="gathers-all-pages-in-one"),
    pytest.param(IgnoresCursor, {}, None, ["read"], {"read.incremental"}, id="ignores-the-cursor"),
    pytest.param(UnstableIds, {}, None, ["read"], {"read.incremental", "read.stable_ids"}, id="unstable-ids"),
    pytest.param(ForgetsTokenRenewal, {}, None, ["auth"], {"auth.expiry"}, id="no-token-renewal"),
    pytest.param(VnptAdapter, {"max_attempts": 1}, None, ["faults"],
                 {"faults.5xx", "faults.429", "faults.dropped"}, id="no-retries"),
    pytest.param(IgnoresRetryAfter, {}, None, ["faults"], {"faults.429"}, id="ignores-retry-after"),
    pytest.param(AlwaysHealthy, {}, None, ["check"], {"check.outage", "check.credentials"}, id="always-healthy"),
    pytest.param(NeverHealthy, {}, None, ["check"], {"check.healthy", "check.outage"}, id="never-healthy"),
    pytest.param(LeaksTheSecret, {}, None, ["check"], {"check.outage", "check.credentials"}, id="leaks-the-secret"),
    pytest.param(RaisesFromCheck, {}, None, ["check"], {"check.outage", "check.credentials"}, id="check-raises"),
    pytest.param(SilentDefaults, {}, None, ["normalize"], {"normalize.valid_or_named"}, id="silent-default"),
    pytest.param(BreaksOnSecondary, {}, None, ["normalize"],
                 {"normalize.valid_or_named", "normalize.round_trip"}, id="normalize-crashes"),
    pytest.param(Lossy, {}, None, ["normalize"], {"normalize.round_trip"}, id="lossy-normalize"),
    pytest.param(Loose, {}, None, ["settings"],
                 {"settings.required", "settings.types", "settings.unknown_key"}, id="loose-settings"),
    pytest.param(Unnamed, {}, None, ["settings"], {"settings.required"}, id="settings-error-names-no-field"),
    pytest.param(VnptAdapter, {}, DeafSimulator, ["check", "faults"],
                 {"check.outage", "faults.5xx", "faults.429", "faults.dropped"}, id="simulator-ignores-faults"),
]


@pytest.mark.parametrize("adapter, overrides, simulator, checks, failing", BROKEN)
async def test_a_broken_adapter_fails_the_checks_for_its_fault(adapter, overrides, simulator, checks, failing):
    report = await run_conformance_async(adapter, settings_overrides={**FAST, **overrides},
                                         checks=checks, simulator=simulator)
    assert {r.name for r in report.failed} == failing, report.table()
    assert not report.ok and "is NOT conformant" in report.table()


def test_every_check_is_shown_failing_by_some_broken_adapter():
    shown = set().union(*(case.values[-1] for case in BROKEN))
    assert shown == set(CHECKS)


async def test_failures_say_what_is_wrong():
    report = await run_conformance_async(DropsLastOfPage, settings_overrides=FAST, checks=["read.full"])
    assert "returned 45 record(s) in 3 page(s), 48 were seeded" in report.row("read.full").detail
    report = await run_conformance_async(VnptAdapter, settings_overrides={**FAST, "max_attempts": 1},
                                         checks=["faults.5xx"])
    assert "gave up after 1 attempt(s)" in report.row("faults.5xx").detail
    report = await run_conformance_async(LeaksTheSecret, settings_overrides=FAST, checks=["check.credentials"])
    detail = report.row("check.credentials").detail
    assert "a secret shows in detail" in detail and "kit-wrong-" not in detail  # masked, even here
    report = await run_conformance_async(SilentDefaults, settings_overrides=FAST, checks=["normalize.valid_or_named"])
    assert "9 valid and 4 invalid, 8 and 5 were seeded" in report.row("normalize.valid_or_named").detail
    report = await run_conformance_async(Lossy, settings_overrides=FAST, checks=["normalize.round_trip"])
    assert "student.ethnicity: expected" in report.row("normalize.round_trip").detail


async def test_what_a_simulator_cannot_do_is_skipped_and_said():
    report = await run_conformance_async(Loose, checks=["check.credentials"])
    assert report.row("check.credentials").skipped and "no SecretStr setting" in report.row("check.credentials").detail
    report = await run_conformance_async(VnptAdapter, settings_overrides=FAST, simulator=NoUpdatesNoTokens,
                                         checks=["read.incremental", "auth.expiry"])
    assert report.ok and all(r.skipped for r in report.rows)
    assert "not supported: the simulator has no update(index)" in report.row("read.incremental").detail
    assert "issues no tokens" in report.row("auth.expiry").detail


def test_assert_conformant_raises_with_the_whole_table():
    with pytest.raises(AssertionError) as err:
        assert_conformant(VnptAdapter, settings_overrides={**FAST, "max_attempts": 1}, checks=["faults.5xx"])
    assert "faults.5xx" in str(err.value) and "FAIL" in str(err.value)
    assert assert_conformant(VnptAdapter, settings_overrides=FAST, checks=["paging.1"]).ok


async def test_the_kit_refuses_what_it_cannot_run(only_vnpt, tmp_path):
    with pytest.raises(ConformanceError, match="unknown adapter 'nope'"):
        await run_conformance_async("nope")
    with pytest.raises(ConformanceError, match="unknown check"):
        await run_conformance_async("vnpt", checks=["speed"])
    config = tmp_path / "hub.yaml"
    config.write_text("adapters:\n  - {name: a, type: vnpt, settings: {client_secret: '${NO_SUCH_VAR_KIT}'}}\n")
    with pytest.raises(ConformanceError, match=r"adapters\[0\]\.settings\.client_secret: environment variable"):
        await run_conformance_async("vnpt", config_path=config)


# --- the command line ----------------------------------------------------------------------------

def hub_cli(*args: str, python: Path | str = sys.executable, cwd: Path, plugins_: str = "vnpt",
            **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOCBA_HUB_LOAD_PLUGINS": plugins_}
    return subprocess.run([str(python), "-m", "hub.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120, **kwargs)


def test_cli_exit_code_follows_the_table_and_config_supplies_settings(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("adapters:\n  - {name: v, type: vnpt, settings: {backoff_seconds: 0.001}}\n")
    ran = hub_cli("conformance", "--adapter", "vnpt", "--config", str(good), "--check", "faults", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.splitlines()[-1] == "vnpt is conformant: every check passed (3 run, 0 skipped)"

    # The same run with the file's max_attempts: 1 — the file's settings reach the adapter.
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapters:\n  - {name: v, type: vnpt, settings: {max_attempts: 1}}\n")
    ran = hub_cli("conformance", "--adapter", "vnpt", "--config", str(bad), "--check", "faults.5xx", cwd=tmp_path)
    assert ran.returncode == 1
    assert any(line.startswith("faults.5xx") and "FAIL" in line for line in ran.stdout.splitlines())

    ran = hub_cli("conformance", "--adapter", "moet", cwd=tmp_path, plugins_="vnpt,moet")
    assert ran.returncode == 2 and "does not fetch" in ran.stderr


# --- the example third-party plugin, installed by pip ------------------------------------------

def _offline_build_possible() -> bool:
    # setuptools builds editable wheels itself from 70.1 on; before that it needs `wheel`.
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="session")
def plugin_python(tmp_path_factory) -> Path:
    """A Python with the example plugin pip-installed, in a venv stacked on this one.

    The plugin is installed for real (an entry point in a dist-info, as a province installs a
    vendor's package), but into a venv of its own that also sees this one's packages: the venv
    the tests run in, shared with other work, is left exactly as it was.
    """
    venv = tmp_path_factory.mktemp("vendor-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_hocba_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    command = [str(python), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q"]
    if _offline_build_possible():
        command.append("--no-build-isolation")   # nothing to fetch: build with what is installed
    installed = subprocess.run([*command, "-e", str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_the_example_plugin_is_listed_by_its_entry_point(plugin_python, tmp_path):
    ran = hub_cli("plugins", "--json", python=plugin_python, cwd=tmp_path, plugins_="vnpt,quangich")
    assert ran.returncode == 0, ran.stderr
    rows = {row["name"]: row for row in json.loads(ran.stdout)}
    assert rows["quangich"] == {"kind": "adapter", "name": "quangich", "package": "hocba-quangich",
                                "version": "0.1.0", "capabilities": "fetch, normalize"}
    assert rows["vnpt"]["package"] == "hocba-hub"   # built-ins and plugins, listed alike


def test_the_example_plugin_passes_the_kit_from_the_command_line(plugin_python, tmp_path):
    config = tmp_path / "hub.yaml"
    config.write_text("adapters:\n  - {name: qi, type: quangich, settings: {backoff_seconds: 0.01}}\n")
    ran = hub_cli("conformance", "--adapter", "quangich", "--config", str(config),
                  python=plugin_python, cwd=tmp_path, plugins_="quangich")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "conformance of adapter 'quangich' against hocba_quangich.simulator:QuangIchSimulator"
    for name in CHECKS:
        assert any(line.split()[:2] == [name, "PASS"] for line in lines), ran.stdout
    assert lines[-1] == "quangich is conformant: every check passed (19 run, 0 skipped)"


def test_the_example_plugins_own_tests_pass(plugin_python):
    ran = subprocess.run([str(plugin_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         capture_output=True, text=True, cwd=EXAMPLE, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "HOCBA_HUB_LOAD_PLUGINS"})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "20 passed" in ran.stdout
