"""The plugin manager: built-ins and third-party plugins load the same way, by entry point.

``HOCBA_HUB_LOAD_PLUGINS=name1,name2`` restricts loading to the named entry points (an empty
value loads none); ``HOCBA_HUB_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import os
import pkgutil
import sys
from dataclasses import dataclass
from functools import cache
from typing import Any

import pluggy

from hub import hookspecs
from hub.contracts import Adapter, DocumentFormat, IdentityProvider, Signer

GROUP = "hocba_hub"


def resolve(ref: str) -> Any:
    """What a ``"package.module:Name"`` reference names (an adapter's ``simulator``, a signer's
    class in a worker process): ``pkgutil.resolve_name``, in one place. Raises ``ImportError``,
    ``AttributeError`` or ``ValueError`` (a malformed reference)."""
    return pkgutil.resolve_name(ref)


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin class (adapter, signer, identity provider, document format) and where it comes from."""
    kind: str         # "adapter" | "signer" | "identity" | "document format"
    name: str
    cls: type
    package: str
    version: str


def _make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    wanted = os.environ.get("HOCBA_HUB_LOAD_PLUGINS")
    allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    if allowed is None:
        pm.load_setuptools_entrypoints(GROUP)
    else:
        for name in sorted(allowed):
            pm.load_setuptools_entrypoints(GROUP, name=name)
    # An implementation of a hook nobody specified is a typo in a plugin: fail at start-up.
    pm.check_pending()
    if os.environ.get("HOCBA_HUB_TRACE_PLUGINS"):
        def before(hook_name, hook_impls, kwargs):
            print(f"hook {hook_name} → {[i.plugin_name for i in hook_impls]} {kwargs}", file=sys.stderr)

        def after(outcome, hook_name, hook_impls, kwargs):
            print(f"hook {hook_name} ← {outcome.get_result()!r}", file=sys.stderr)

        pm.add_hookcall_monitoring(before, after)
    return pm


@cache
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (entry points are read once)."""
    return _make_manager()


def _collect(hook, base: type, kind: str) -> dict[str, PluginInfo]:
    pm = manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    found: dict[str, PluginInfo] = {}
    for impl in hook.get_hookimpls():
        registered: list[type] = []
        impl.function(register=registered.append)
        dist = dists.get(id(impl.plugin))
        for cls in registered:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"plugin {impl.plugin_name} registered {cls!r}, not a {base.__name__}")
            if cls.name in found:
                raise ValueError(
                    f"{kind} name {cls.name!r} registered twice "
                    f"({found[cls.name].package} and {impl.plugin_name})"
                )
            found[cls.name] = PluginInfo(
                kind, cls.name, cls,
                dist.metadata["Name"] if dist else impl.plugin_name,
                dist.version if dist else "",
            )
    return found


@cache
def adapter_types() -> dict[str, PluginInfo]:
    """Every registered adapter class by name."""
    return _collect(manager().hook.hocba_hub_adapter_types, Adapter, "adapter")


@cache
def signer_types() -> dict[str, PluginInfo]:
    """Every registered signer class by name."""
    return _collect(manager().hook.hocba_hub_signer_types, Signer, "signer")


@cache
def identity_provider_types() -> dict[str, PluginInfo]:
    """Every registered identity provider class by name."""
    return _collect(manager().hook.hocba_hub_identity_provider_types, IdentityProvider, "identity")


def reload() -> None:
    """Read the entry points again (after ``HOCBA_HUB_LOAD_PLUGINS`` changed, e.g. in a test)."""
    for cached in (manager, adapter_types, signer_types, identity_provider_types, document_formats):
        cached.cache_clear()


@cache
def document_formats() -> dict[str, PluginInfo]:
    """Every registered document format class by name."""
    return _collect(manager().hook.hocba_hub_document_formats, DocumentFormat, "document format")
