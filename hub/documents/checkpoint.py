"""The audit log's head, signed by the Department and timestamped: an anchor kept outside the store.

``hocba-hub audit checkpoint`` appends one line per checkpoint to an anchor file kept where the
hub cannot rewrite it (another machine, write-once storage). Each line carries a small XML
document — the last entry's id and hash, the number of entries, the hub's time — signed whole
by the Department's certificate (an enveloped XAdES signature, as a class package's manifest
is: ``xmldsig.sign_enveloped``) and, when ``signing.timestamp_url`` names a timestamping
authority, an RFC 3161 timestamp over that signature (XAdES-T).

Why signed: a plain line proves nothing about who wrote it, so a hub (or an intruder on it) that
cut the log's end could also write a matching line. Why timestamped: the Department's key may
sit on the hub's own machine; the TSA's token proves the checkpoint existed at that time, so a
checkpoint written later for a cut log cannot pass as an earlier one, and a hub clock set back
is seen (the token's time far from the checkpoint's own).

``read_anchors`` checks every line (signature, the Department's certificate, the token's own
signature and chain, the token's time) and returns what each vouches for; the chain is then
compared with them by ``hub.store.audit.check_anchors``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from lxml import etree

from hub.contracts import Signer, SigningIdentity
from hub.documents.signing import SigningError
from hub.documents.xmldsig import (
    DS,
    XADES,
    add_timestamps,
    sign_enveloped,
    signature_value_digest,
    verify_enveloped,
)
from hub.documents.xmlsafe import UnsafeXml, parse
from hub.store.audit import Anchor, AuditReport

NAMESPACE = "urn:hocba-hub:audit-checkpoint:1"
SIGNATURE_ID = "audit-checkpoint-signature"
# How far the TSA's time may be from the time the hub wrote into the checkpoint: two honest
# clocks and a slow TSA stay well inside it; a hub clock set back (or forward) does not.
CLOCK_TOLERANCE = dt.timedelta(minutes=10)
_NS = {"c": NAMESPACE, "ds": DS, "xades": XADES}


def build(report: AuditReport, at: dt.datetime, department: SigningIdentity) -> bytes:
    """The unsigned checkpoint of the head ``report`` found (no ``Id`` on the root: the
    enveloped signature covers the whole document)."""
    root = etree.Element(f"{{{NAMESPACE}}}AuditCheckpoint", nsmap={None: NAMESPACE})
    for tag, text in (("DepartmentCode", department.school_code), ("DepartmentName", department.name),
                      ("LastEntry", str(report.last_id)), ("Head", report.head),
                      ("Entries", str(report.entries)), ("At", at.isoformat(timespec="seconds"))):
        etree.SubElement(root, f"{{{NAMESPACE}}}{tag}").text = text
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


async def sign_checkpoint(report: AuditReport, signer: Signer, department: SigningIdentity, *,
                          timestamp_url: str = "", c14n: str = "exclusive",
                          at: dt.datetime | None = None) -> str:
    """One anchor line (JSON) for the head ``report`` found: the checkpoint signed by
    ``department`` through ``signer`` and, with ``timestamp_url``, timestamped. ``SigningError``
    naming what failed (no key, the TSA) — a checkpoint is never written half-made."""
    at = at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    signed = await sign_enveloped(build(report, at, department), department, signer, signature_id=SIGNATURE_ID,
                                  c14n=c14n, description=f"Sở GD&ĐT ký điểm neo nhật ký kiểm toán {report.last_id}")
    if timestamp_url:
        from hub.documents.pades import timestamper_for

        try:
            token = await timestamper_for(timestamp_url).async_timestamp(
                signature_value_digest(signed, SIGNATURE_ID), "sha256")
        except SigningError:
            raise
        except Exception as exc:  # the TSA's failure, named: no unstamped checkpoint is written instead
            raise SigningError(f"signing.timestamp_url: the timestamp from {timestamp_url} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        signed = add_timestamps(signed, {SIGNATURE_ID: token.dump()})
    # The plain fields repeat the signed ones for a reader of the file; only the signed count.
    return json.dumps({"id": report.last_id, "hash": report.head, "entries": report.entries,
                       "at": at.isoformat(timespec="seconds"),
                       "checkpoint": base64.b64encode(signed).decode("ascii")}, sort_keys=True)


@dataclass(frozen=True)
class ReadAnchors:
    anchors: tuple[Anchor, ...]      # what each line's signature vouches for (bad lines left out)
    problems: tuple[str, ...]
    signers: tuple[str, ...] = ()    # who signed, as the certificates name them
    last_timestamp: dt.datetime | None = None


async def read_anchors(lines: Iterable[str], trust_roots: Sequence[bytes] = (), *,
                       department_code: str | None = None,
                       organisation_ids: Mapping[str, Sequence[str]] | None = None,
                       require_timestamp: bool = False) -> ReadAnchors:
    """Check every anchor line; return the checkpoints their signatures vouch for and a problem
    for each line that is not a signed checkpoint, whose signature fails, whose certificate is
    not the Department's (``department_code``) or does not chain to ``trust_roots`` (DER; none:
    integrity only), whose timestamp is broken, untrusted or far from its time, or that has no
    timestamp when ``require_timestamp``."""
    anchors, problems, signers = [], [], []
    last_ts = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"anchor line {number}"
        try:
            fields = json.loads(line)
            signed = base64.b64decode(fields["checkpoint"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            problems.append(f"{where}: not a signed checkpoint (a line `audit checkpoint` writes)")
            continue
        found, line_problems, signer, ts = await _check(signed, where, trust_roots, department_code,
                                                        organisation_ids, require_timestamp)
        if found is not None and any(fields.get(k) != v for k, v in (
                ("id", found.entry_id), ("hash", found.hash), ("at", found.at))):
            line_problems.append(f"{where}: its plain fields differ from its signed checkpoint (edited)")
        problems += line_problems
        if found is not None and not line_problems:
            anchors.append(found)
            signers.append(signer)
            last_ts = ts or last_ts
    return ReadAnchors(tuple(anchors), tuple(problems), tuple(dict.fromkeys(signers)), last_ts)


async def _check(signed: bytes, where: str, trust_roots: Sequence[bytes], department_code: str | None,
                 organisation_ids: Mapping[str, Sequence[str]] | None, require_timestamp: bool,
                 ) -> tuple[Anchor | None, list[str], str, dt.datetime | None]:
    report = await verify_enveloped(signed, trust_roots, name=where, role="department")
    problems = list(report.problems)
    if not report.valid and not problems:
        problems.append(f"{where}: the signature does not verify")
    if report.certificate and department_code:
        from hub.documents.binding import certificate_matches

        named = SigningIdentity("department", "", department_code)
        problems += [f"{where}: {en}" for _, en in certificate_matches(
            x509.load_der_x509_certificate(report.certificate), named, organisation_ids)]
    try:
        root = parse(signed).getroot()
        facts = {tag: root.findtext(f"c:{tag}", namespaces=_NS) or "" for tag in ("LastEntry", "Head", "At")}
        anchor = Anchor(where, int(facts["LastEntry"]), facts["Head"], facts["At"])
        at = dt.datetime.fromisoformat(facts["At"])
    except (UnsafeXml, ValueError) as exc:
        return None, [*problems, f"{where}: the checkpoint cannot be read ({exc})"], "", None
    if root.tag != f"{{{NAMESPACE}}}AuditCheckpoint":
        return None, [*problems, f"{where}: not an audit checkpoint ({root.tag})"], "", None
    token = root.findtext(".//xades:SignatureTimeStamp/xades:EncapsulatedTimeStamp", namespaces=_NS)
    ts_time = None
    if token:
        ts_time, ts_problems = await _check_token(token, signed, trust_roots, where)
        problems += ts_problems
        if ts_time is not None and abs(ts_time - at) > CLOCK_TOLERANCE:
            problems.append(f"{where}: the timestamp says {ts_time.isoformat()}, the checkpoint {facts['At']}: "
                            "the hub's clock was wrong, or the checkpoint was written later than it says")
    elif require_timestamp:
        problems.append(f"{where}: not timestamped (signing.timestamp_url is configured)")
    return anchor, problems, report.signer, ts_time


async def _check_token(token_b64: str, signed: bytes, trust_roots: Sequence[bytes], where: str,
                       ) -> tuple[dt.datetime | None, list[str]]:
    """The token's time, and its problems: it must cover this signature's value, and its own
    signature must verify (and, with ``trust_roots``, chain to one: the TSA's certificate)."""
    from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
    from pyhanko.sign.validation.status import TimestampSignatureStatus
    from pyhanko_certvalidator import ValidationContext

    try:
        info = cms.ContentInfo.load(base64.b64decode(token_b64))
        signed_data = info["content"]
        tst = tsp.TSTInfo.load(signed_data["encap_content_info"]["content"].parsed.dump())
        gen_time = tst["gen_time"].native
    except Exception as exc:  # a damaged token is a verdict, never a traceback
        return None, [f"{where}: the timestamp cannot be read ({type(exc).__name__})"]
    expected = signature_value_digest(signed, SIGNATURE_ID)
    problems = []
    if tst["message_imprint"]["hashed_message"].native != expected:
        problems.append(f"{where}: the timestamp does not cover this checkpoint's signature")
    # Without trust anchors only the token's integrity counts: its own certificates stand in as
    # roots (pyHanko would otherwise log a path-building traceback for each token).
    anchors = ([asn1_x509.Certificate.load(r) for r in trust_roots] if trust_roots else
               [c.chosen for c in signed_data["certificates"] or () if c.name == "certificate"])
    context = ValidationContext(trust_roots=anchors, allow_fetching=False, revocation_mode="soft-fail")
    try:
        status = TimestampSignatureStatus(**await validate_tst_signed_data(
            signed_data, context, lambda _algorithm: expected))
    except Exception as exc:  # pyHanko's errors all mean "not valid", with a reason
        return gen_time, [*problems, f"{where}: the timestamp's signature cannot be checked ({exc})"]
    if not (status.intact and status.valid):
        problems.append(f"{where}: the timestamp's signature does not verify")
    elif trust_roots and not status.trusted:
        problems.append(f"{where}: the timestamping authority's certificate does not chain to a trust anchor")
    return gen_time, problems
