"""Bind signatures to the record: the right person or school signed each stage, all of them, in order.

A signature can be mathematically valid and still wrong: another teacher's key, another school's
seal, the last stage stripped. ``verify_xml`` and ``verify_pdf_bound`` check, for the XML học bạ
and its PDF twin alike:

- each signature is valid (and chains to a trust anchor when anchors are given);
- its certificate belongs to whom the signed data names for that role: a person by the personal
  id in the certificate's subject (``serialNumber``, or the ``UID`` Vietnamese CAs write as
  ``CCCD:<12 digits>``/``CMND:<…>``) and by name; the school by its identifiers (``MST:<tax
  code>``, its school code, or what ``verification.school_ids`` configures) in ``serialNumber``/``UID``;
- every required stage is present, and the signing times follow the stage order and are not
  before the data's own time.

Reasons come in Vietnamese and English (``Reason``), for the CLI, quarantine and the admin API.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from hub.contracts import ORGANISATION_ROLES, SIGNING_ROLES, SIGNING_STAGES, DocumentFormat, SigningIdentity
from hub.records import VIETNAM_TIME

__all__ = ["Reason", "SignedBy", "Verdict", "ROLE_NAMES", "certificate_matches", "verify_pdf_bound", "verify_xml"]

ROLE_NAMES = {"subject_teacher": ("giáo viên bộ môn", "subject teacher"),
              "homeroom_teacher": ("giáo viên chủ nhiệm", "homeroom teacher"),
              "principal": ("hiệu trưởng", "principal"),
              "school_seal": ("chữ ký phát hành của nhà trường", "the school's issuing signature")}
_PERSON_PREFIXES = ("CCCD:", "CMND:", "CCCD-", "CMND-", "")
_SCHOOL_PREFIXES = ("MST:", "MNS:", "MST-", "")


@dataclass(frozen=True)
class Reason:
    """One problem, said in both languages; ``where`` names the slot or field."""
    where: str
    vi: str
    en: str

    def __str__(self) -> str:
        return f"{self.where}: {self.en}"


@dataclass(frozen=True)
class SignedBy:
    """One signature as a reader sees it: where, in which role, by whom, when, and whether it holds."""
    where: str                     # the slot or field
    role: str                      # a signing role, "" when the signature sits in no slot
    signer: str                    # the certificate's common name
    time: dt.datetime | None       # a timestamp's time if any, else the signer's stated time
    ok: bool                       # intact, valid (and trusted when trust was checked)


# What a verdict may say about the document besides its signatures: the record's envelope and the
# school. Nothing about the student (this is what the public verification page shows).
ABOUT_KEYS = ("record_id", "version", "event", "transcript_id", "school_code", "school_name", "school_year")


@dataclass
class Verdict:
    """The outcome for one document: ``ok`` only when nothing is wrong."""
    kind: str                                  # "xml" | "pdf"
    reasons: list[Reason] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)   # one line per signature, for people
    trust_checked: bool = False
    signed_by: list[SignedBy] = field(default_factory=list)
    about: dict[str, str] = field(default_factory=dict)  # ABOUT_KEYS the document states

    @property
    def ok(self) -> bool:
        return not self.reasons

    def lines(self) -> list[str]:
        """What ``hocba-hub verify`` prints: the verdict, each signature, each reason (vi / en)."""
        if not self.ok:
            head = "KHÔNG HỢP LỆ / INVALID"
        elif self.trust_checked:
            head = "HỢP LỆ / VALID"
        else:
            head = "TOÀN VẸN, CHƯA XÁC NHẬN NGUỒN TIN CẬY / INTACT, TRUST NOT CHECKED"
        out = [head]
        if not self.trust_checked:
            out.append("  chưa kiểm tra với chứng thư gốc tin cậy (không có --trust) / "
                       "not checked against a trust anchor (no --trust given)")
        out += [f"  {s}" for s in self.signatures]
        out += [f"  - {r.where}: {r.vi} / {r.en}" for r in self.reasons]
        return out


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text or "").split()).casefold()


def _subject_ids(cert: x509.Certificate) -> list[str]:
    values = []
    for oid in (NameOID.SERIAL_NUMBER, NameOID.USER_ID):
        values += [str(a.value).strip() for a in cert.subject.get_attributes_for_oid(oid)]
    return values


def _common_name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


def certificate_matches(cert: x509.Certificate, identity: SigningIdentity,
                        school_ids: Mapping[str, Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """Why ``cert`` is not ``identity``'s, as ``(vi, en)`` pairs ([] when it is)."""
    ids = _subject_ids(cert)
    shown = _common_name(cert)
    if identity.role in ORGANISATION_ROLES:
        # A school's or the Department's certificate: its code, or an identifier configured for
        # it (a tax code), in serialNumber or UID.
        wanted = {identity.school_code, *((school_ids or {}).get(identity.school_code, ()))}
        stripped = {v[len(p):] for v in ids for p in _SCHOOL_PREFIXES if v.upper().startswith(p)}
        if not (wanted & (set(ids) | stripped)):
            vi, en = ("trường", "school") if identity.role == "school_seal" else ("Sở GD&ĐT", "Department")
            return [(f"chứng thư của {shown} không phải của {vi} {identity.school_code}",
                     f"the certificate of {shown} is not the organisation certificate of {en} "
                     f"{identity.school_code} (its identifiers: {', '.join(ids) or 'none'})")]
        return []
    problems = []
    if not identity.personal_id:
        return [("hồ sơ không ghi số định danh của người ký", "the record names no personal id for the signer")]
    stripped = {v[len(p):] for v in ids for p in _PERSON_PREFIXES if v.upper().startswith(p)}
    if identity.personal_id not in stripped:
        problems.append((f"chứng thư của {shown} không mang số định danh của người được ghi trong hồ sơ",
                         f"the certificate of {shown} does not carry the personal id the record names "
                         f"for {ROLE_NAMES[identity.role][1]}"))
    if _norm(shown) != _norm(identity.name):
        problems.append((f"tên trên chứng thư ({shown}) khác tên trong hồ sơ ({identity.name})",
                         f"the certificate's name ({shown}) is not the name the record gives ({identity.name})"))
    return problems


def _as_aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=VIETNAM_TIME)


def _check_stages(signed: list[tuple[str, str, dt.datetime | None]], required: list[tuple[str, str]],
                  data_time: dt.datetime | None, reasons: list[Reason]) -> None:
    """``signed``: (role, where, time); ``required``: (role, where) that must be signed."""
    present = {where for _, where, _ in signed}
    for role, where in required:
        if where not in present:
            vi, en = ROLE_NAMES[role]
            reasons.append(Reason(where, f"thiếu chữ ký của {vi}", f"the {en}'s signature is missing"))
    order = {r: i for i, r in enumerate(SIGNING_STAGES)}
    for role, where, when in signed:
        if when is None:
            continue
        when = _as_aware(when)
        if data_time is not None and when < _as_aware(data_time):
            reasons.append(Reason(where, f"ký lúc {when.astimezone(VIETNAM_TIME):%d/%m/%Y %H:%M}, trước thời điểm "
                                         f"cập nhật dữ liệu", f"signed at {when.isoformat()}, before the data "
                                                               f"it signs was last updated ({data_time.isoformat()})"))
        for other_role, other_where, other_when in signed:
            if other_when is not None and order[other_role] > order[role] and _as_aware(other_when) < when:
                reasons.append(Reason(other_where, f"ký trước {ROLE_NAMES[role][0]}, sai thứ tự",
                                      f"signed before the {ROLE_NAMES[role][1]} ({where}), out of order"))


def verify_xml(document: bytes, fmt: DocumentFormat, report, *, required_roles: Sequence[str] = SIGNING_STAGES,
               school_ids: Mapping[str, Sequence[str]] | None = None, trust_checked: bool = False,
               record: Mapping[str, object] | None = None) -> Verdict:
    """The verdict on an XML học bạ from its ``xmldsig.XmlVerifyReport``.

    The document names its signers; ``record`` (central format, snake_case) when given must agree
    with it (the hub checks a vendor's signed XML against the record it holds).
    """
    verdict = Verdict("xml", trust_checked=trust_checked)
    if report.error:
        verdict.reasons.append(Reason("(document)", "không đọc được tài liệu XML", report.error))
        return verdict
    errors = fmt.schema_errors(document)
    for line in errors[:5]:
        verdict.reasons.append(Reason("(schema)", "tài liệu không đúng lược đồ XSD", line))
    slots = {s.name: s for s in report.slots}
    signed: list[tuple[str, str, dt.datetime | None]] = []
    for sig in report.signatures:
        verdict.signatures.append(
            f"{sig.slot}: {'ok' if sig.valid and not sig.problems else 'NOT OK'} — {sig.signer or '?'}, "
            f"{sig.signing_time.isoformat() if sig.signing_time else 'no time'}, {sig.level}")
        verdict.signed_by.append(SignedBy(sig.slot, sig.role, sig.signer, sig.timestamp_time or sig.signing_time,
                                          sig.valid and not sig.problems))
        for problem in sig.problems:
            where, _, text = problem.partition(": ")
            verdict.reasons.append(Reason(where or sig.slot, "chữ ký không hợp lệ hoặc sai vị trí", text or problem))
        slot = slots.get(sig.slot)
        if slot is None or not sig.certificate:
            continue
        cert = x509.load_der_x509_certificate(sig.certificate)
        for vi, en in certificate_matches(cert, slot.identity, school_ids):
            verdict.reasons.append(Reason(slot.name, vi, en))
        signed.append((slot.role, slot.name, sig.timestamp_time or sig.signing_time))
    teachers_named = any(s.role == "subject_teacher" and s.identity.personal_id for s in report.slots)
    required = [(s.role, s.name) for s in report.slots if s.role in required_roles
                and (s.role != "subject_teacher" or teachers_named)]
    data = fmt.data_of(document)
    verdict.about = {k: str(data[k]) for k in ABOUT_KEYS if data.get(k) not in (None, "")}
    data_time = None
    if data.get("updated_at"):
        try:
            data_time = dt.datetime.fromisoformat(str(data["updated_at"]))
        except ValueError:
            pass
    _check_stages(signed, required, data_time, verdict.reasons)
    if record is not None:
        for key in ("school_code", "transcript_id"):
            if data.get(key) is not None and str(record.get(key)) != str(data.get(key)):
                verdict.reasons.append(Reason(key, "tài liệu XML không khớp với hồ sơ",
                                              f"the XML says {data.get(key)!r}, the record {record.get(key)!r}"))
    return verdict


def verify_pdf_bound(report, record_json: bytes | None, all_fields: Sequence[str], *,
                     required_roles: Sequence[str] | None = None,
                     school_ids: Mapping[str, Sequence[str]] | None = None,
                     trust_checked: bool = False) -> Verdict:
    """The verdict on a signed PDF from ``hub.documents.verify.VerifyReport`` and its ``hocba.json``.

    ``all_fields``: every signature field of the document, signed or not; ``required_roles``
    defaults to all of them (each role's field is created at render time, so an empty one is a
    missing stage).
    """
    from hub.documents.signing import identity_for
    from hub.records import parse_transcript

    verdict = Verdict("pdf", trust_checked=trust_checked)
    for sig in report.signatures:
        when = sig.signing_time.isoformat(timespec="seconds") if sig.signing_time else "no time"
        holds = sig.ok or (not trust_checked and not sig.problems(require_trust=False))
        verdict.signatures.append(f"{sig.field}: {'ok' if holds else 'NOT OK'}"
                                  f" — {sig.signer}, {when}, level {sig.pades_level or 'not PAdES'}")
        verdict.signed_by.append(SignedBy(sig.field, sig.field if sig.field in SIGNING_ROLES else "", sig.signer,
                                          sig.signing_time, holds))
    for problem in report.problems(require_trust=trust_checked):
        where, _, text = problem.partition(": ")
        if problem == "the document carries no signature":
            continue  # said below as missing stages
        verdict.reasons.append(Reason(where, "chữ ký không hợp lệ hoặc tài liệu đã bị sửa", text or problem))
    if record_json is None:
        verdict.reasons.append(Reason("hocba.json", "tài liệu không kèm dữ liệu học bạ",
                                      "the PDF carries no record to bind its signatures to"))
        return verdict
    try:
        record = parse_transcript(json.loads(record_json))
    except Exception as exc:  # a record that does not parse is a verdict
        verdict.reasons.append(Reason("hocba.json", "dữ liệu học bạ kèm theo không hợp lệ", str(exc)[:200]))
        return verdict
    facts = record.model_dump(mode="json")
    verdict.about = {k: str(facts[k]) for k in ABOUT_KEYS if facts.get(k) not in (None, "")}
    fields = [f for f in all_fields if f in SIGNING_ROLES]
    signed = []
    for sig in report.signatures:
        if sig.field not in SIGNING_ROLES or not sig.certificate:
            continue
        try:
            identity = identity_for(record, sig.field)
        except ValueError as exc:
            verdict.reasons.append(Reason(sig.field, "hồ sơ không ghi người ký", str(exc)))
            continue
        cert = x509.load_der_x509_certificate(sig.certificate)
        for vi, en in certificate_matches(cert, identity, school_ids):
            verdict.reasons.append(Reason(sig.field, vi, en))
        signed.append((sig.field, sig.field, sig.signing_time))
    roles = [r for r in (required_roles if required_roles is not None else fields) if r in fields]
    _check_stages(signed, [(r, r) for r in roles], record.updated_at, verdict.reasons)
    return verdict

async def verify_file(data: bytes, *, trust_roots: Sequence[bytes] = (), kind: str | None = None,
                      xml_format: str = "xml", required_roles: Sequence[str] | None = None,
                      school_ids: Mapping[str, Sequence[str]] | None = None) -> Verdict:
    """Verify a signed XML học bạ or PDF (``kind`` from the content when not given) end to end."""
    kind = kind or ("pdf" if data.lstrip()[:5] == b"%PDF-" else "xml")
    if kind == "xml":
        from hub.documents.xmldsig import verify_document
        from hub.plugins import document_formats

        fmt = document_formats()[xml_format].cls()
        report = await verify_document(data, fmt, trust_roots)
        return verify_xml(data, fmt, report, required_roles=required_roles or SIGNING_STAGES,
                          school_ids=school_ids, trust_checked=bool(trust_roots))
    import io

    from asn1crypto import x509 as asn1_x509
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.fields import enumerate_sig_fields

    from hub.documents.verify import extract_record, verify_pdf

    report = await verify_pdf(data, [asn1_x509.Certificate.load(r) for r in trust_roots])
    try:
        fields = [name for name, _, _ in enumerate_sig_fields(PdfFileReader(io.BytesIO(data), strict=False))]
        record = extract_record(data)
    except Exception:  # unreadable: verify_pdf already said why
        fields, record = [], None
    if report.error:
        verdict = Verdict("pdf", trust_checked=bool(trust_roots))
        verdict.reasons.append(Reason("(document)", "không đọc được tài liệu PDF", report.error))
        return verdict
    return verify_pdf_bound(report, record, fields, required_roles=required_roles, school_ids=school_ids,
                            trust_checked=bool(trust_roots))
