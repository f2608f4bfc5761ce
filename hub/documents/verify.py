"""Check a signed transcript the way a receiver would, and read back the record it carries.

``verify_pdf`` validates every signature with pyHanko against the trust roots given (no
network: revocation data is used only if embedded), including pyHanko's analysis of what
changed after each signature, and names each signature's PAdES level: B-LT only when the
document's own DSS holds what validates it (checked offline, revocation required).
``VerifyReport.problems`` says in words what is wrong, for quarantine reasons;
``verify_blocking`` runs in a worker process. ``extract_record`` returns the ``hocba.json``
attachment, the central-format record the signatures cover.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from pyhanko.keys import load_certs_from_pemder
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.dss import DocumentSecurityStore
from pyhanko_certvalidator import ValidationContext

from hub.documents.render import ATTACHMENT_NAME

__all__ = ["SignatureReport", "VerifyReport", "extract_attachment", "extract_record", "load_certs",
           "signed_fields", "trust_roots_der", "verify_blocking", "verify_pdf"]

# Filling a pre-created signature field is form filling; DSS/timestamp updates are LTA updates.
_ALLOWED_CHANGES = (ModificationLevel.NONE, ModificationLevel.LTA_UPDATES, ModificationLevel.FORM_FILLING)


@dataclass(frozen=True)
class SignatureReport:
    """One signature's validation result."""
    field: str
    signer: str                       # the signing certificate's common name
    signing_time: dt.datetime | None  # from a timestamp token if any, else as the signer states
    intact: bool                      # the signed bytes hash to the signed digest
    valid: bool                       # the cryptographic signature checks out
    trusted: bool                     # the certificate chains to a given trust root
    modification_level: str           # what changed after this signature (pyHanko's level)
    docmdp_ok: bool                   # those changes are allowed
    coverage: str                     # ENTIRE_FILE for the last signature, ENTIRE_REVISION before
    pades_level: str | None           # B-B, B-T, B-LT, or None for a non-PAdES signature
    summary: str = ""
    timestamp_ok: bool | None = None  # the signature timestamp is sound and trusted (None: none)
    certificate: bytes = b""          # DER of the signing certificate (to bind it to the record)

    @property
    def modified(self) -> bool:
        """The signed bytes changed, or what was added after the signature is not allowed."""
        return not self.intact or not self.docmdp_ok or self.modification_level not in {
            m.name for m in _ALLOWED_CHANGES}

    @property
    def ok(self) -> bool:
        return (self.valid and self.trusted and not self.modified and self.timestamp_ok is not False)

    def problems(self, *, require_trust: bool = True) -> list[str]:
        """What is wrong with this signature, in words ([] when nothing is)."""
        out = []
        if not self.intact:
            out.append(f"{self.field}: the document was modified after it was signed "
                       f"(the signed bytes no longer match)")
        elif self.modified:
            out.append(f"{self.field}: the document was modified after it was signed "
                       f"({self.modification_level}, not allowed)")
        if not self.valid:
            out.append(f"{self.field}: the signature does not verify against the certificate of {self.signer}")
        if require_trust and not self.trusted:
            out.append(f"{self.field}: the certificate of {self.signer} does not chain to a trusted root")
        if self.timestamp_ok is False:
            out.append(f"{self.field}: the signature timestamp is not valid or not trusted")
        return out


@dataclass(frozen=True)
class VerifyReport:
    """Every signature in a PDF; ``ok`` only when there is at least one and all are fine."""
    signatures: list[SignatureReport] = field(default_factory=list)
    error: str = ""                   # the PDF could not be read or a signature not parsed

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.signatures) and all(s.ok for s in self.signatures)

    @property
    def fields(self) -> list[str]:
        """Signed field names in signing order."""
        return [s.field for s in self.signatures]

    def problems(self, *, require_trust: bool = True) -> list[str]:
        """Everything wrong with the document's signatures, one line each ([] if none).

        ``require_trust=False`` checks integrity and validity only (no trust roots configured).
        """
        if self.error:
            return [self.error]
        if not self.signatures:
            return ["the document carries no signature"]
        return [p for s in self.signatures for p in s.problems(require_trust=require_trust)]


def load_certs(path: str | Path | Iterable[str | Path]) -> list[asn1_x509.Certificate]:
    """Certificates from PEM or DER files (a PEM file may hold several)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return list(load_certs_from_pemder([str(p) for p in paths]))


async def _pades_level(reader: PdfFileReader, sig, status, trust_roots) -> str | None:
    if sig.sig_object.get("/SubFilter") != "/ETSI.CAdES.detached":
        return None
    if status.timestamp_validity is None:
        return "B-B"
    if "/DSS" not in reader.root:
        return "B-T"
    # B-LT means the document alone suffices years from now: validate again with nothing but
    # the DSS's certificates, OCSP answers and CRLs, no fetching, revocation data required.
    try:
        dss = DocumentSecurityStore.read_dss(reader)
        if status.signing_cert.issuer_serial not in dss.certs:
            return "B-T"  # the DSS serves other signatures; checking this one would only fail
        context = dss.as_validation_context({
            "trust_roots": list(trust_roots), "allow_fetching": False,
            "revocation_mode": "hard-fail", "retroactive_revinfo": True})
        # The changes after this signature were judged by the first validation (its verdict
        # stands in the report); this one asks only about trust, so pyHanko's difference
        # analysis, the costliest part of validating, is not run a second time.
        lt = await async_validate_pdf_signature(sig, signer_validation_context=context,
                                                ts_validation_context=context, skip_diff=True)
    except Exception:  # unreadable DSS or revocation data: not B-LT, the B-T verdict stands
        return "B-T"
    ts = lt.timestamp_validity
    if lt.trusted and lt.valid and ts is not None and ts.trusted:
        return "B-LT"
    return "B-T"


async def verify_pdf(pdf: bytes, trust_roots: list[asn1_x509.Certificate]) -> VerifyReport:
    """Validate every signature in ``pdf`` against ``trust_roots`` (offline)."""
    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        embedded = reader.embedded_regular_signatures
    except Exception as exc:  # a damaged file is a verdict, not a crash
        return VerifyReport(error=f"cannot read PDF: {exc}")
    context = ValidationContext(trust_roots=list(trust_roots), allow_fetching=False)
    reports = []
    for sig in embedded:
        try:
            status = await async_validate_pdf_signature(sig, signer_validation_context=context)
        except Exception as exc:  # a malformed signature container is a verdict too
            return VerifyReport(reports, error=f"signature {sig.field_name}: {exc}")
        ts = status.timestamp_validity
        level = status.modification_level
        pades = await _pades_level(reader, sig, status, trust_roots) if status.trusted else (
            None if sig.sig_object.get("/SubFilter") != "/ETSI.CAdES.detached"
            else "B-B" if ts is None else "B-T")
        reports.append(SignatureReport(
            field=sig.field_name,
            signer=status.signing_cert.subject.native.get("common_name", status.signing_cert.subject.human_friendly),
            signing_time=ts.timestamp if ts is not None else status.signer_reported_dt,
            intact=status.intact,
            valid=status.valid,
            trusted=status.trusted,
            modification_level=level.name if level is not None else "UNKNOWN",
            docmdp_ok=bool(status.docmdp_ok),
            coverage=status.coverage.name if status.coverage is not None else "UNKNOWN",
            pades_level=pades,
            summary=status.summary(),
            timestamp_ok=None if ts is None else bool(ts.intact and ts.valid and (ts.trusted or not trust_roots)),
            certificate=status.signing_cert.dump(),
        ))
    return VerifyReport(reports)


@functools.lru_cache(maxsize=8)
def trust_roots_der(paths: tuple[str | Path, ...]) -> tuple[bytes, ...]:
    """DER of every certificate in the PEM/DER files ``paths`` (read once per process)."""
    try:
        return tuple(c.dump() for c in load_certs(paths)) if paths else ()
    except (OSError, ValueError) as exc:
        raise ValueError(f"signing.trust: cannot read the trusted roots {', '.join(map(str, paths))}: {exc}") from exc


def verify_blocking(pdf: bytes, trust_roots: tuple[bytes, ...]) -> VerifyReport:
    """``verify_pdf`` for a worker process: DER roots in, a picklable report out."""
    roots = [asn1_x509.Certificate.load(r) for r in trust_roots]
    return asyncio.run(verify_pdf(pdf, roots))


def signed_fields(pdf: bytes) -> list[str]:
    """Names of the fields that hold a signature, in signing order (no validation)."""
    reader = PdfFileReader(io.BytesIO(pdf), strict=False)
    return [s.field_name for s in reader.embedded_regular_signatures]


def _name_tree(node: generic.DictionaryObject) -> Iterable[tuple[str, generic.PdfObject]]:
    names = node.get("/Names")
    if names is not None:
        for i in range(0, len(names) - 1, 2):
            yield str(names[i]), names[i + 1]
    for kid in node.get("/Kids", ()):
        yield from _name_tree(kid.get_object())


def extract_attachment(pdf: bytes, name: str = ATTACHMENT_NAME) -> bytes | None:
    """The bytes of the embedded file ``name`` in the latest revision of ``pdf``, or ``None``."""
    reader = PdfFileReader(io.BytesIO(pdf), strict=False)
    tree = reader.root.get("/Names", generic.DictionaryObject()).get("/EmbeddedFiles")
    if tree is None:
        return None
    for key, spec in _name_tree(tree.get_object()):
        spec = spec.get_object()
        if name in (key, str(spec.get("/UF", "")), str(spec.get("/F", ""))):
            return spec["/EF"]["/F"].get_object().data
    return None


def extract_record(pdf: bytes) -> bytes:
    """The central-format record (``hocba.json``) a transcript carries; ``ValueError`` if none."""
    data = extract_attachment(pdf, ATTACHMENT_NAME)
    if data is None:
        raise ValueError(f"the PDF carries no {ATTACHMENT_NAME} attachment")
    return data
