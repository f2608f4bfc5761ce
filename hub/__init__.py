"""hocba-hub: a vendor-neutral integration hub for Vietnamese digital school transcripts.

This module is the public API: a plugin (adapter, signer, simulator, transform) imports what it
needs from ``hub`` and nothing deeper, so the hub's insides can change without breaking it::

    from hub import Adapter, PluginSettings, RawRecord, hookimpl

Names load on first use, so importing ``hub`` stays cheap for a process that needs little of it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("hocba-hub")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# Public name → the module that defines it (one place each).
_EXPORTS: dict[str, str] = {
    # the plugin contract
    "hookimpl": "hub.hookspecs",
    **dict.fromkeys((
        "Adapter", "Delivery", "DeliveryError", "ExportFile", "Faults", "Health", "IdentityFinding", "IdentityProvider",
        "IdentityResult", "IdentitySimulator", "Page", "Person", "PluginContext", "PluginError", "PluginSettings",
        "PushNonce",
        "ORGANISATION_ROLES", "RawRecord", "Receipt", "SIGNING_ROLES", "SIGNING_STAGES", "DigestSignRequest", "DocumentFormat",
        "SignatureSlot", "SignRequest", "Signer", "SigningIdentity", "Simulator"),
        "hub.contracts"),
    # the central format
    **dict.fromkeys((
        "Event", "GENERAL_COMPETENCIES", "PrimaryTranscript", "QUALITIES", "SecondaryTranscript",
        "VIETNAM_TIME", "field_errors", "parse_transcript"), "hub.records"),
    **dict.fromkeys(("SUBJECTS", "Subject", "subjects_for"), "hub.catalogue"),
    # the one normalisation path
    **dict.fromkeys(("Envelope", "Outcome", "central_record", "normalize"), "hub.engine.normalize"),
    "record_id_for": "hub.store",
    # signing: who signs, the PAdES signature, keys on this machine
    **dict.fromkeys(("SigningError", "refuse_outside_validity"), "hub.documents.signing"),
    **dict.fromkeys(("reserve_bytes", "sign_elsewhere"), "hub.documents.pades"),
    **dict.fromkeys(("LocalKey", "LocalKeySigner"), "hub.documents.local_keys"),
    "ROLE_LABELS": "hub.documents.render",
    "XmlElement": "hub.documents.xmlsafe",
    # class packages the Department signs for a transcript store
    **dict.fromkeys(("ClassPackage", "MAX_PACKAGE_BYTES", "PACKAGE_MEDIA_TYPE", "PackageError", "PackageItem",
                     "PackageReceipt", "PackageReport", "package_class", "verify_package"), "hub.documents.package"),
    **dict.fromkeys(("digest_info", "verify_digest"), "hub.documents.digests"),
    # the kit for vendor authors
    **dict.fromkeys(("HttpPullMixin", "HttpPullSettings", "TokenPaging", "Transient", "parse_retry_after",
                     "retrying"), "hub.kit.http"),
    **dict.fromkeys(("HttpDestination", "HttpDestinationSettings", "describe", "reasons"), "hub.kit.destination"),
    **dict.fromkeys(("ContractError", "as_list", "as_object", "base64_document", "load_json", "map_keys", "stated_time", "vietnam_time",
                     "where"), "hub.kit.mapping"),
    **dict.fromkeys(("Attempt", "DestinationSimulator", "FaultySimulator", "FeedRow", "FolderSimulator", "LoopbackServer",
                     "Reject", "SealedTokens", "SyntheticFeed", "drop_connection", "maintenance_page"),
                    "hub.kit.simulation"),
    **dict.fromkeys(("GIVEN", "INVALID_KINDS", "SCHOOLS", "invalid_transcript", "nfd", "signing_identities", "transcript",
                     "with_subject_teachers"),
                    "hub.kit.synthetic"),
    **dict.fromkeys(("ROOT_CERT", "ensure_pki", "sign_xml"), "hub.kit.pki"),
    **dict.fromkeys(("CHECKS", "assert_conformant"), "hub.kit.conformance"),
    "AdapterConformance": "hub.kit.pytest_plugin",
    "scrub": "hub.logs",
    "csv_text": "hub.documents.sheets",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'hub' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
