"""The plugin contract: every hook a plugin may implement.

Registration hooks receive a ``register`` callback, so one plugin can register zero, one or
many classes and the core decides what a registration means. Implementations may accept only
the arguments they use, so hooks can grow arguments without breaking plugins. The classes
registered follow the protocols in ``hub.contracts``.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("hocba_hub")
hookimpl = pluggy.HookimplMarker("hocba_hub")


@hookspec
def hocba_hub_adapter_types(register: Callable[[type], None]) -> None:
    """Register adapter classes (``hub.contracts.Adapter`` subclasses): vendors and destinations.

    Example::

        @hookimpl
        def hocba_hub_adapter_types(register):
            register(MyVendorAdapter)
    """


@hookspec
def hocba_hub_signer_types(register: Callable[[type], None]) -> None:
    """Register signer classes (``hub.contracts.Signer`` subclasses): one per signing provider."""


@hookspec
def hocba_hub_identity_provider_types(register: Callable[[type], None]) -> None:
    """Register identity provider classes (``hub.contracts.IdentityProvider`` subclasses): services
    that say whether the people a transcript names are who the record says (a population database)."""


@hookspec
def hocba_hub_document_formats(register: Callable[[type], None]) -> None:
    """Register document formats (``hub.contracts.DocumentFormat`` subclasses): the signed XML
    học bạ the hub builds beside the PDF. A province swaps the built-in layout for the
    Ministry's, once published, by registering its own and naming it under ``documents``."""


@hookspec
def hocba_hub_transform_record(record: dict[str, Any], adapter: str) -> dict[str, Any] | None:
    """Adjust a normalised record (central-format dict) before it is validated.

    Province-specific rules go here (e.g. a department's school-code prefix). Return a new dict
    to replace the record, or ``None`` to leave it as it is. Called once per implementation, in
    registration order, each seeing the previous one's result.
    """


@hookspec
def hocba_hub_record_event(event: dict[str, Any]) -> None:
    """Observe a record's state change (``record_id``, ``adapter``, ``school_code``, ``state``,
    ``error``). For notifications and custom metrics; must not block or raise."""
