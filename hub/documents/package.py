"""Class packages (gói tin): a class's signed transcripts, listed in a manifest the Department signs.

What travels to a transcript store is not one transcript but a class: the Department of
Education (Sở GD&ĐT) puts the signed XML học bạ and signed PDF of every transcript of one class
beside a **manifest** that names, per transcript, its record id, version, verification code and
the SHA-256 of each signed file, and signs the manifest with its own certificate. The store then
checks one signature to know the Department vouches for the package, each hash to know nothing
was swapped on the way, and each transcript's own signatures to know the school signed it.

The manifest (``package.xsd`` beside this module; every manifest written validates)::

    GOI_TIN_HOC_BA PHIENBAN_DINHDANG="1.0"
      THONG_TIN_GOI       MAGOI (package id), MASOGD, TENSOGD, MATRUONG, TENTRUONG, TENLOP, NAMHOC,
                          THOIGIANTAO, SOLUONG
      DANH_SACH_HOC_BA
        HOC_BA            IDBANGHI, PHIENBAN, MADINHDANHHOCBA, MAXACTHUC?,
                          TEP_XML TEN= SHA256= KICHTHUOC=, TEP_PDF …?
      ds:Signature        the Department's: enveloped, XAdES-BES, Reference URI="" (the whole manifest)

The signature is made like every XML signature of the hub (``hub.documents.xmldsig``, signxml,
the digest signed by a signer plugin: a key file, a token or a remote service), as the identity
``SigningIdentity("department", <name>, <code>)``, whose key is found by the Department's code.

**The container** is a ZIP file (``application/zip``), members in this order, stored with a fixed
date so the same package is the same bytes:

    manifest.xml                          the signed manifest
    hocba/<nnn>-<record id>-v<version>.xml   each signed XML học bạ, as TEP_XML names it
    hocba/<nnn>-<record id>-v<version>.pdf   each signed PDF, as TEP_PDF names it

A reader refuses members the manifest does not name, names outside ``hocba/``, repeated names,
and more than ``MAX_PACKAGE_BYTES`` unpacked.

**What the engine passes** (``package_class``), once every transcript of a class is signed:

- one ``PackageItem`` per transcript: ``record_id`` and ``version`` (the version being
  delivered), the signed XML (the configured XML format's document), the signed PDF (empty when
  the configuration makes none) and the verification code (the record's ``verify_code``);
- the signer instance named by ``department.signer``, with ``department_code`` and
  ``department_name`` from ``department:`` (the key is looked up by the code, role
  ``department``);
- ``document_format`` (the configured XML format, default the built-in ``xml``), ``c14n``
  (``signing.c14n``) and ``executor`` (the hub's worker pool: the XML work runs there).

All items must be of one school, class and school year, of the Department's code, each XML
schema-valid and naming the record id and version it is passed with; anything else is a
``PackageError`` naming the record (the class waits, the reason shown). The package id is
derived from the class and the ``(record id, version)`` pairs unless given, so packaging the
same class again after a crash gives the same id and the store answers a duplicate; a corrected
transcript (its next version) makes a new package. The result goes to the destination's
``deliver_package``, whose ``PackageReceipt`` holds one ``Receipt`` per ``(record id, version)``
— each record's receipt to store; a ``DeliveryError`` classifies as for ``deliver``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from lxml import etree

from hub.contracts import DocumentFormat, Receipt, Signer, SigningIdentity
from hub.documents.binding import certificate_matches, verify_xml
from hub.documents.verify import verify_pdf
from hub.documents.xmldsig import XmlSignatureReport, sign_enveloped, verify_document, verify_enveloped
from hub.documents.xmlsafe import parse
from hub.documents.xmlsafe import schema_errors as xml_schema_errors
from hub.records import VIETNAM_TIME

__all__ = ["ClassPackage", "MANIFEST_NAME", "MAX_PACKAGE_BYTES", "ManifestEntry", "PACKAGE_MEDIA_TYPE",
           "PACKAGE_SCHEMA_FILE", "PackageError", "PackageItem", "PackageReceipt", "PackageReport",
           "build_manifest", "manifest_schema_errors", "package_class", "package_id_for", "verify_package"]

PACKAGE_SCHEMA_FILE = Path(__file__).with_name("package.xsd")
MANIFEST_NAME = "manifest.xml"
PACKAGE_MEDIA_TYPE = "application/zip"
SIGNATURE_ID = "sig-sogd"
MAX_PACKAGE_BYTES = 200 * 1024 * 1024
"""Largest package a reader unpacks (every member's declared size added up): a class of fifty
transcripts with their PDFs is a few megabytes; a ZIP bomb declares far more."""
_MAX_MEMBERS = 2001
_FIXED_DATE = (2000, 1, 1, 0, 0, 0)
_PACKAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class PackageError(ValueError):
    """A package that cannot be built or read; the message names the record or member."""


@dataclass(frozen=True)
class PackageItem:
    """One signed transcript of a class, as the engine hands it to ``package_class``."""
    record_id: str
    version: int
    xml: bytes                       # the signed XML học bạ
    pdf: bytes = b""                 # the signed PDF (empty when the configuration makes none)
    verification_code: str = ""      # the code printed on the transcript, if it has one


@dataclass(frozen=True)
class ManifestEntry:
    """One transcript as the manifest lists it."""
    record_id: str
    version: int
    transcript_id: str
    verification_code: str
    xml_name: str
    xml_sha256: str
    xml_size: int
    pdf_name: str = ""
    pdf_sha256: str = ""
    pdf_size: int = 0

    @property
    def label(self) -> str:
        return f"{self.record_id} v{self.version}"


@dataclass(frozen=True)
class ClassPackage:
    """A signed class package: the manifest's facts, the signed manifest, the files it lists."""
    package_id: str
    department_code: str
    school_code: str
    class_name: str
    school_year: str
    manifest: bytes                            # signed (or, while being built, not yet)
    entries: tuple[ManifestEntry, ...]
    files: dict[str, bytes] = field(repr=False, default_factory=dict)  # member name → bytes

    def to_zip(self) -> bytes:
        """The container (see the module's docstring): the same package gives the same bytes."""
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in (MANIFEST_NAME, *(n for e in self.entries for n in (e.xml_name, e.pdf_name) if n)):
                info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, self.manifest if name == MANIFEST_NAME else self.files[name])
        return out.getvalue()

    @classmethod
    def from_zip(cls, data: bytes, *, max_bytes: int = MAX_PACKAGE_BYTES) -> "ClassPackage":
        """Read a container without checking any signature or hash (``verify_package`` does);
        ``PackageError`` if it is not a package at all."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, ValueError) as exc:
            raise PackageError(f"not a ZIP container: {exc}") from None
        with archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            if len(infos) > _MAX_MEMBERS:
                raise PackageError(f"{len(infos)} members; at most {_MAX_MEMBERS} are read")
            if len(set(names)) != len(names):
                raise PackageError("a member name occurs twice")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise PackageError(f"members unpack to {declared} bytes, more than {max_bytes}")
            if MANIFEST_NAME not in names:
                raise PackageError(f"no {MANIFEST_NAME} in the container")
            strays = [n for n in names if n != MANIFEST_NAME and not _member_name(n)]
            if strays:
                raise PackageError(f"member(s) outside hocba/ or badly named: {', '.join(strays[:5])}")
            try:
                files = {i.filename: _read_member(archive, i, max_bytes) for i in infos}
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise PackageError(f"a member cannot be unpacked: {exc}") from None
        manifest = files.pop(MANIFEST_NAME)
        facts, entries = read_manifest(manifest)
        return cls(facts["MAGOI"], facts["MASOGD"], facts["MATRUONG"], facts["TENLOP"], facts["NAMHOC"],
                   manifest, entries, files)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    # The declared size can lie: read at most one byte past it, so a liar is caught, not believed.
    with archive.open(info) as member:
        data = member.read(min(info.file_size, limit) + 1)
    if len(data) > info.file_size:
        raise PackageError(f"{info.filename}: unpacks to more than its declared {info.file_size} bytes")
    return data


@dataclass(frozen=True)
class PackageReport:
    """``verify_package``'s verdict: the Department's signature, and what is wrong, one line each."""
    package_id: str = ""
    department: XmlSignatureReport | None = None
    problems: tuple[str, ...] = ()                            # the package's own (container, manifest, signature)
    transcripts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "<record id> v<version>" → problems

    @property
    def ok(self) -> bool:
        return not self.problems and not any(self.transcripts.values())

    def all_problems(self) -> list[str]:
        return [*self.problems, *(p for ps in self.transcripts.values() for p in ps)]


@dataclass(frozen=True)
class PackageReceipt:
    """A store's acknowledgement of one package, with one ``Receipt`` per transcript it lists
    (keyed ``(record_id, version)``)."""
    package_id: str
    receipt_id: str
    received_at: str
    duplicate: bool = False
    transcripts: dict[tuple[str, int], Receipt] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


# --- building -------------------------------------------------------------------------------

def package_id_for(department_code: str, school_code: str, class_name: str, school_year: str,
                   items: Sequence[tuple[str, int]]) -> str:
    """A stable package id for a class and the versions it carries: the same class with the
    same versions is the same package (a store answers it as a duplicate), a corrected
    transcript makes another."""
    digest = hashlib.sha256("\n".join([department_code, school_code, class_name, school_year,
                                       *sorted(f"{r}\t{v}" for r, v in items)]).encode()).hexdigest()
    return f"GT-{_safe(school_code, 20)}-{school_year}-{digest[:20]}"


def _safe(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:limit] or "_"


def _member_name(name: str) -> bool:
    return re.fullmatch(r"hocba/[A-Za-z0-9][A-Za-z0-9._-]{0,150}\.(xml|pdf)", name) is not None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _class_of(items: Sequence[PackageItem], fmt: DocumentFormat, department_code: str) -> dict[str, str]:
    if not items:
        raise PackageError("a package needs at least one transcript")
    seen: dict[str, int] = {}
    facts: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"{item.record_id} v{item.version}"
        if item.record_id in seen:
            raise PackageError(f"{where}: the record is listed twice (items {seen[item.record_id]} and {index})")
        seen[item.record_id] = index
        errors = fmt.schema_errors(item.xml)
        if errors:
            raise PackageError(f"{where}: the XML does not validate: {errors[0]}")
        data = fmt.data_of(item.xml)
        if data.get("record_id") != item.record_id or str(data.get("version")) != str(item.version):
            raise PackageError(f"{where}: the XML says {data.get('record_id')} v{data.get('version')}")
        if data.get("department_code") != department_code:
            raise PackageError(f"{where}: the school belongs to department {data.get('department_code')}, "
                               f"not to {department_code} (department.code)")
        if not item.pdf.startswith(b"%PDF-") and item.pdf:
            raise PackageError(f"{where}: the PDF is not a PDF")
        this = {k: str(data.get(k) or "") for k in ("school_code", "school_name", "class_name", "school_year")}
        if not facts:
            facts = this
        for key in ("school_code", "class_name", "school_year"):
            if this[key] != facts[key]:
                raise PackageError(f"{where}: {key} is {this[key]!r}, the package's first transcript says "
                                   f"{facts[key]!r}; one package holds one class")
    return facts


def build_manifest(items: Sequence[PackageItem], fmt: DocumentFormat, *, department_code: str,
                   department_name: str, package_id: str | None = None,
                   created_at: dt.datetime | None = None) -> ClassPackage:
    """The unsigned package: the manifest of ``items`` (one class) and the files it lists."""
    facts = _class_of(items, fmt, department_code)
    package_id = package_id or package_id_for(department_code, facts["school_code"], facts["class_name"],
                                              facts["school_year"], [(i.record_id, i.version) for i in items])
    if not _PACKAGE_ID.match(package_id):
        raise PackageError(f"package id {package_id!r}: letters, digits, '.', '_', '-' only, at most 100")
    created_at = (created_at or dt.datetime.now(VIETNAM_TIME)).replace(microsecond=0)
    root = etree.Element("GOI_TIN_HOC_BA", PHIENBAN_DINHDANG="1.0")
    head = etree.SubElement(root, "THONG_TIN_GOI")
    for tag, value in (("MAGOI", package_id), ("MASOGD", department_code), ("TENSOGD", department_name),
                       ("MATRUONG", facts["school_code"]), ("TENTRUONG", facts["school_name"]),
                       ("TENLOP", facts["class_name"]), ("NAMHOC", facts["school_year"]),
                       ("THOIGIANTAO", created_at.isoformat()), ("SOLUONG", str(len(items)))):
        if value:
            etree.SubElement(head, tag).text = value
    listing = etree.SubElement(root, "DANH_SACH_HOC_BA")
    entries, files = [], {}
    for n, item in enumerate(items, 1):
        stem = f"hocba/{n:03d}-{_safe(item.record_id, 100)}-v{item.version}"
        entry = ManifestEntry(
            item.record_id, item.version, str(fmt.data_of(item.xml).get("transcript_id") or ""),
            item.verification_code, f"{stem}.xml", _sha256(item.xml), len(item.xml),
            f"{stem}.pdf" if item.pdf else "", _sha256(item.pdf) if item.pdf else "", len(item.pdf))
        el = etree.SubElement(listing, "HOC_BA")
        for tag, value in (("IDBANGHI", entry.record_id), ("PHIENBAN", str(entry.version)),
                           ("MADINHDANHHOCBA", entry.transcript_id), ("MAXACTHUC", entry.verification_code)):
            if value:
                etree.SubElement(el, tag).text = value
        etree.SubElement(el, "TEP_XML", TEN=entry.xml_name, SHA256=entry.xml_sha256, KICHTHUOC=str(entry.xml_size))
        files[entry.xml_name] = item.xml
        if item.pdf:
            etree.SubElement(el, "TEP_PDF", TEN=entry.pdf_name, SHA256=entry.pdf_sha256,
                             KICHTHUOC=str(entry.pdf_size))
            files[entry.pdf_name] = item.pdf
        entries.append(entry)
    manifest = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    errors = manifest_schema_errors(manifest)
    if errors:  # a value the schema refuses (an overlong class name…): say which, before signing
        raise PackageError(f"the manifest does not validate: {'; '.join(errors)}")
    return ClassPackage(package_id, department_code, facts["school_code"], facts["class_name"],
                        facts["school_year"], manifest, tuple(entries), files)


async def package_class(items: Sequence[PackageItem], signer: Signer, *, department_code: str,
                        department_name: str, document_format: DocumentFormat | None = None,
                        package_id: str | None = None, c14n: str = "exclusive",
                        executor: Executor | None = None) -> ClassPackage:
    """The class's package, its manifest signed by the Department through ``signer``: ready for
    a destination's ``deliver_package``. ``PackageError`` when the items are not one class of
    this Department; ``SigningError`` when the signer has no usable key for the Department."""
    fmt = document_format or _default_format()
    loop = asyncio.get_running_loop()
    unsigned = await loop.run_in_executor(executor, partial(
        build_manifest, items, fmt, department_code=department_code, department_name=department_name,
        package_id=package_id))
    identity = SigningIdentity("department", department_name, department_code)
    signed = await sign_enveloped(unsigned.manifest, identity, signer, signature_id=SIGNATURE_ID, c14n=c14n,
                                  description=f"Sở GD&ĐT ký gói tin {unsigned.package_id}", executor=executor)
    return ClassPackage(unsigned.package_id, unsigned.department_code, unsigned.school_code, unsigned.class_name,
                        unsigned.school_year, signed, unsigned.entries, unsigned.files)


def _default_format() -> DocumentFormat:
    from hub.plugins import document_formats

    return document_formats()["xml"].cls()


# --- reading and checking -------------------------------------------------------------------

@cache
def _schema() -> etree.XMLSchema:
    # Ships with the package; parsed once per process, never fetched.
    return etree.XMLSchema(parse(PACKAGE_SCHEMA_FILE.read_bytes()))


def manifest_schema_errors(manifest: bytes) -> list[str]:
    """What makes ``manifest`` invalid against ``package.xsd`` ([] when valid)."""
    return xml_schema_errors(_schema(), manifest)


def read_manifest(manifest: bytes) -> tuple[dict[str, str], tuple[ManifestEntry, ...]]:
    """The manifest's facts (``THONG_TIN_GOI``'s children by name) and entries; ``PackageError``
    naming the schema's complaint when it does not validate."""
    errors = manifest_schema_errors(manifest)
    if errors:
        raise PackageError(f"{MANIFEST_NAME} does not validate: {'; '.join(errors[:5])}")
    root = parse(manifest).getroot()
    facts = {el.tag: el.text or "" for el in root.find("THONG_TIN_GOI")}
    entries = []
    for el in root.iterfind("DANH_SACH_HOC_BA/HOC_BA"):
        xml, pdf = el.find("TEP_XML"), el.find("TEP_PDF")
        entries.append(ManifestEntry(
            el.findtext("IDBANGHI"), int(el.findtext("PHIENBAN")), el.findtext("MADINHDANHHOCBA"),
            el.findtext("MAXACTHUC") or "", xml.get("TEN"), xml.get("SHA256"), int(xml.get("KICHTHUOC")),
            *((pdf.get("TEN"), pdf.get("SHA256"), int(pdf.get("KICHTHUOC"))) if pdf is not None else ())))
    return facts, tuple(entries)


async def verify_package(package: bytes | ClassPackage, trust_roots: Sequence[bytes] = (), *,
                         document_format: DocumentFormat | None = None, check_transcripts: bool = True,
                         organisation_ids: Mapping[str, Sequence[str]] | None = None) -> PackageReport:
    """Check a package as a store would: the container, the manifest against its schema, the
    Department's signature (chaining to ``trust_roots``, DER, when given; its certificate the
    Department's own, by its code or an identifier ``organisation_ids`` gives for it), every
    file's size and SHA-256 against the manifest, no file it does not list, and —
    ``check_transcripts`` — every transcript's own signatures, bound to the people and school the
    XML names (``hub.documents.binding.verify_xml``; the PDF: ``verify_pdf``), the school's issuing
    signature present, each XML naming the record, version and class its entry does."""
    try:
        pkg = package if isinstance(package, ClassPackage) else ClassPackage.from_zip(package)
    except PackageError as exc:
        return PackageReport(problems=(str(exc),))
    department = await verify_enveloped(pkg.manifest, trust_roots, name="the Department's signature",
                                        role="department")
    problems = list(department.problems)
    if department.certificate:
        # Any certificate under the anchor verifies; only the Department's may vouch for a package.
        named = SigningIdentity("department", "", pkg.department_code)
        problems += [f"the Department's signature: {en}" for _, en in certificate_matches(
            x509.load_der_x509_certificate(department.certificate), named, organisation_ids)]
    count = parse(pkg.manifest).getroot().findtext("THONG_TIN_GOI/SOLUONG")
    if count != str(len(pkg.entries)):
        problems.append(f"{MANIFEST_NAME}: SOLUONG says {count} transcripts, DANH_SACH_HOC_BA lists {len(pkg.entries)}")
    listed = {n for e in pkg.entries for n in (e.xml_name, e.pdf_name) if n}
    strays = sorted(set(pkg.files) - listed)
    if strays:
        problems.append(f"member(s) the manifest does not list: {', '.join(strays[:5])}")
    fmt = document_format or _default_format()
    per: dict[str, tuple[str, ...]] = {}
    for entry in pkg.entries:
        per[entry.label] = tuple(await _check_entry(pkg, entry, fmt, trust_roots, check_transcripts,
                                                    organisation_ids))
    return PackageReport(pkg.package_id, department, tuple(problems), per)


async def _check_entry(pkg: ClassPackage, entry: ManifestEntry, fmt: DocumentFormat,
                       trust_roots: Sequence[bytes], check_transcripts: bool,
                       organisation_ids: Mapping[str, Sequence[str]] | None) -> list[str]:
    where = entry.label
    out = []
    for name, digest, size in ((entry.xml_name, entry.xml_sha256, entry.xml_size),
                               (entry.pdf_name, entry.pdf_sha256, entry.pdf_size)):
        if not name:
            continue
        data = pkg.files.get(name)
        if data is None:
            out.append(f"{where}: {name} is listed but not in the package")
        elif len(data) != size or _sha256(data) != digest:
            out.append(f"{where}: {name} does not match the SHA-256 the Department signed (it was changed "
                       f"or swapped after signing)")
    if out or not check_transcripts:
        return out
    xml = pkg.files[entry.xml_name]
    try:
        data = fmt.data_of(xml)
    except ValueError as exc:  # the Department signed something that is not XML: a verdict, not a crash
        return [f"{where}: XML: cannot be read ({exc})"]
    expected = {"record_id": entry.record_id, "version": str(entry.version), "school_code": pkg.school_code,
                "class_name": pkg.class_name, "school_year": pkg.school_year,
                "department_code": pkg.department_code}
    for key, value in expected.items():
        if str(data.get(key)) != value:
            out.append(f"{where}: the XML's {key} is {data.get(key)!r}, the manifest says {value!r}")
    # Which stages a school signs is its province's choice; an issued transcript has at least
    # the school's issuing signature, and every signature present must be the person's it names.
    verdict = verify_xml(xml, fmt, await verify_document(xml, fmt, trust_roots), required_roles=("school_seal",),
                         school_ids=organisation_ids, trust_checked=bool(trust_roots))
    out += [f"{where}: XML: {reason}" for reason in verdict.reasons]
    if entry.pdf_name:
        pdf_report = await verify_pdf(pkg.files[entry.pdf_name], [asn1_x509.Certificate.load(r) for r in trust_roots])
        out += [f"{where}: PDF: {p}" for p in pdf_report.problems(require_trust=bool(trust_roots))]
    return out
