"""Class packages for the Ministry's transcript store: built from really signed transcripts, the
manifest signed by the Department's key and checked by xmlsec1 (an independent validator), then
submitted to the store's simulator over real HTTP on loopback — idempotency, tampering, recall,
cancel with a reason, and faults seen as transient or permanent."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from adapters.moet.adapter import MoetAdapter, MoetSettings
from adapters.moet.simulator import MoetSimulator
from hub.config import ConfigError, parse_config
from hub.contracts import DeliveryError, PluginContext, SigningIdentity
from hub.documents.package import (
    ClassPackage,
    PackageError,
    PackageItem,
    build_manifest,
    manifest_schema_errors,
    package_class,
    verify_package,
)
from hub.documents.render import render_pdf
from hub.documents.signing import request_for
from hub.documents.verify import trust_roots_der
from hub.documents.xmldsig import DS, XADES, sign_enveloped
from hub.documents.xmlsafe import parse
from hub.kit.pki import create_root, issue
from hub.kit.synthetic import department_identity, signing_identities, transcript, with_subject_teachers
from hub.records import parse_transcript
from tests.conftest import PASSWORD
from tests.test_config import example
from tests.test_xml import FMT, record, sign_all, signer

CLASS_5B = (0, 36)           # two synthetic transcripts of school 01001001, class 5B, 2024-2025
DEPT = department_identity("01")
needs_xmlsec = pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 is not installed")


@pytest.fixture(scope="module")
def keys_dir(pki):
    directory, root = pki
    return directory, root


@pytest.fixture(scope="module")
def transcripts(keys_dir):
    """Each transcript of class 5B with every stage signed, in XML and in PDF."""
    directory, _ = keys_dir
    keys = signer(directory)
    out = []

    async def make():
        await keys.open()
        for index in CLASS_5B:
            rec = record(index)
            xml = await sign_all(FMT.build(rec), keys)
            pdf = render_pdf(rec, xml=FMT.build(rec))
            for role in ("homeroom_teacher", "principal", "school_seal"):
                [pdf] = await keys.sign([request_for(rec, pdf, role)])
            out.append(PackageItem(rec.record_id, rec.version, xml, pdf, f"HB-{index:04d}"))

    asyncio.run(make())
    return out


@pytest.fixture
async def keys(keys_dir):
    k = signer(keys_dir[0])
    await k.open()
    return k


@pytest.fixture(scope="module")
def roots(keys_dir):
    return trust_roots_der((str(keys_dir[1]),))


async def package_of(items, keys, **kwargs) -> ClassPackage:
    return await package_class(items, keys, department_code=DEPT.school_code, department_name=DEPT.name, **kwargs)


def with_xml(item: PackageItem, xml: bytes) -> PackageItem:
    return PackageItem(item.record_id, item.version, xml, item.pdf, item.verification_code)


def changed_score(xml: bytes) -> bytes:
    root = parse(xml).getroot()
    score = root.find("DU_LIEU_HOC_BA/DIEM_TONG_KET/DIEMKTDKCN")   # the year-end test score
    score.text = "10" if score.text != "10" else "9"
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def rezip(data: bytes, replace: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace.pop(info.filename, src.read(info)))
        for name, body in replace.items():
            dst.writestr(name, body)
    return out.getvalue()


@pytest.fixture
async def store(roots):
    sim = MoetSimulator(trust_roots=roots)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def moet(store, tmp_path):
    adapter = MoetAdapter(MoetSettings.model_validate(store.adapter_settings()), PluginContext("moet", tmp_path))
    await adapter.open()
    yield adapter
    await adapter.close()


# --- the package ------------------------------------------------------------------------------

async def test_the_manifest_lists_every_transcript_and_validates(transcripts, keys):
    package = await package_of(transcripts, keys)
    assert manifest_schema_errors(package.manifest) == []
    assert [(e.record_id, e.version, e.verification_code) for e in package.entries] == [
        ("X0000", 1, "HB-0000"), ("X0036", 1, "HB-0036")]
    for entry, item in zip(package.entries, transcripts):
        assert entry.xml_sha256 == hashlib.sha256(item.xml).hexdigest()
        assert entry.pdf_sha256 == hashlib.sha256(item.pdf).hexdigest()
        assert package.files[entry.xml_name] == item.xml and package.files[entry.pdf_name] == item.pdf
    assert (package.department_code, package.school_code, package.class_name, package.school_year) == (
        "01", "01001001", "5B", "2024-2025")
    container = package.to_zip()
    assert container == package.to_zip()                  # the same package is the same bytes
    with zipfile.ZipFile(io.BytesIO(container)) as z:
        assert z.namelist()[0] == "manifest.xml" and len(z.namelist()) == 5
    again = ClassPackage.from_zip(container)
    assert again.entries == package.entries and again.manifest == package.manifest
    # Packaging the same class again (a crash, a retry) gives the same package id.
    assert (await package_of(transcripts, keys)).package_id == package.package_id
    assert (await package_of(transcripts[:1], keys)).package_id != package.package_id
    unsigned = build_manifest(transcripts, FMT, department_code="01", department_name=DEPT.name)
    assert manifest_schema_errors(unsigned.manifest) == []
    broken = package.manifest.replace(b"<SOLUONG>2</SOLUONG>", b"<SOLUONG>two</SOLUONG>")
    assert manifest_schema_errors(broken)


async def test_only_one_class_of_the_department_goes_in_a_package(transcripts, keys, keys_dir):
    other_class = PackageItem("X0001", 1, FMT.build(record(1)))      # school 01002003
    with pytest.raises(PackageError, match="X0001 v1: school_code is '01002003'"):
        await package_of([*transcripts, other_class], keys)
    with pytest.raises(PackageError, match="not to 79 \\(department.code\\)"):
        await package_class(transcripts, keys, department_code="79", department_name="Sở GD&ĐT TP.HCM")
    with pytest.raises(PackageError, match="X0000 v2: the XML says X0000 v1"):
        await package_of([PackageItem("X0000", 2, transcripts[0].xml)], keys)
    with pytest.raises(PackageError, match="listed twice"):
        await package_of([transcripts[0], transcripts[0]], keys)


def xmlsec(path: Path, trusted: Path) -> subprocess.CompletedProcess:
    """xmlsec1's verdict on a signed manifest (the XAdES and KeyInfo references by their Id)."""
    return subprocess.run(["xmlsec1", "--verify", "--trusted-pem", str(trusted),
                           "--id-attr:Id", f"{XADES}:SignedProperties", "--id-attr:Id", f"{DS}:KeyInfo",
                           str(path)], capture_output=True, text=True)


@needs_xmlsec
async def test_xmlsec1_verifies_the_departments_signature(transcripts, keys, keys_dir, tmp_path):
    _, root = keys_dir
    package = await package_of(transcripts, keys)
    manifest = tmp_path / "manifest.xml"
    manifest.write_bytes(package.manifest)

    done = xmlsec(manifest, root)
    assert done.returncode == 0 and "SignedInfo References (ok/all): 3/3" in done.stderr, done.stderr
    signer_cert = parse(package.manifest).getroot().findtext(f".//{{{DS}}}X509Certificate")
    assert signer_cert  # the Department's certificate travels with the signature
    # A hash changed in the manifest: the Department did not sign that.
    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(package.manifest.replace(package.entries[0].xml_sha256.encode(), b"0" * 64))
    assert xmlsec(tampered, root).returncode != 0
    # Another root: the signature is intact but the certificate is not trusted.
    stranger = create_root(tmp_path / "other-pki", "Someone else's root")
    assert xmlsec(manifest, stranger).returncode != 0


async def test_verify_package_names_each_problem(transcripts, keys, roots, tmp_path):
    package = await package_of(transcripts, keys)
    report = await verify_package(package.to_zip(), roots)
    assert report.ok, report.all_problems()
    assert report.department.signer == DEPT.name and report.department.trusted
    first = package.entries[0]
    swapped = rezip(package.to_zip(), {first.xml_name: changed_score(transcripts[0].xml), "hocba/extra.pdf": b"%PDF-"})
    report = await verify_package(swapped, roots)
    problems = report.all_problems()
    assert any("X0000 v1: hocba/001-X0000-v1.xml does not match the SHA-256 the Department signed" in p
               for p in problems), problems
    assert any("hocba/extra.pdf" in p for p in problems)
    assert (await verify_package(b"not a zip", roots)).problems[0].startswith("not a ZIP container")
    # A school's seal chains to the same root, but only the Department vouches for a package.
    unsigned = build_manifest(transcripts, FMT, department_code="01", department_name=DEPT.name)
    seal = SigningIdentity("school_seal", "Trường Tiểu học Nguyễn Du", "01001001")
    by_school = dataclasses.replace(unsigned, manifest=await sign_enveloped(
        unsigned.manifest, seal, keys, signature_id="sig-sogd"))
    report = await verify_package(by_school, roots)
    assert report.problems == ("the Department's signature: the certificate of Trường Tiểu học Nguyễn Du is not "
                               "the organisation certificate of Department 01 (its identifiers: 01001001, "
                               "MST:01001001)",), report.problems
    assert (await verify_package(by_school, roots, organisation_ids={"01": ["01001001"]})).ok
    stranger = trust_roots_der((str(create_root(tmp_path / "other", "Another root")),))
    untrusted = await verify_package(package.to_zip(), stranger)
    assert any("the Department's signature: the certificate of" in p and "trust anchor" in p
               for p in untrusted.problems), untrusted.problems


async def test_the_department_can_sign_through_a_remote_signing_service(transcripts, keys_dir, roots):
    # The same signer step as a principal's: only the manifest's digest goes to the service,
    # and the Department approves it like any signer would.
    from signers.csc.signer import CscSigner
    from signers.csc.simulator import CscSimulator

    service = CscSimulator(pki_dir=keys_dir[0], password=PASSWORD, poll_interval=0.05)
    await service.start()
    remote = CscSigner(CscSigner.Settings(**{**service.adapter_settings(), "batch_window": 0.05,
                                             "poll_interval": 0.05, "backoff": 0.01}),
                       PluginContext("smartca", Path(".")))
    await remote.open()
    try:
        package = await package_of(transcripts, remote)
    finally:
        await remote.close()
        await service.stop()
    assert service.counters.signatures == 1 and service.counters.largest_request < 4096
    report = await verify_package(package.to_zip(), roots)
    assert report.ok, report.all_problems()
    assert report.department.signer == DEPT.name


# --- the store: submit, idempotency, refusals -------------------------------------------------

async def test_a_package_is_accepted_once_and_resubmitting_it_is_a_duplicate(transcripts, keys, moet, store):
    package = await package_of(transcripts, keys)
    receipt = await moet.deliver_package(package)
    assert not receipt.duplicate and receipt.package_id == package.package_id
    assert receipt.receipt_id.startswith("MOET-PKG-")
    assert set(receipt.transcripts) == {("X0000", 1), ("X0036", 1)}
    assert {r.detail["status"] for r in receipt.transcripts.values()} == {"accepted"}
    again = await moet.deliver_package(package)
    assert again.duplicate and again.receipt_id == receipt.receipt_id
    assert {k: r.receipt_id for k, r in again.transcripts.items()} == {
        k: r.receipt_id for k, r in receipt.transcripts.items()}
    # Packaged and signed again (another signing time, which has a one-second resolution, and
    # RSA PKCS#1 v1.5 is deterministic): the same content, the same answer.
    await asyncio.sleep(1.1)
    resigned = await package_of(transcripts, keys)
    assert resigned.manifest != package.manifest
    assert (await moet.deliver_package(resigned)).receipt_id == receipt.receipt_id
    assert store.counters.packages_created == 1 and store.counters.packages_duplicate == 2
    assert store.accepted() == {"X0000": 1, "X0036": 1}
    held = await moet.package_receipt(package.package_id)
    assert held.detail["status"] == "accepted" and held.receipt_id == receipt.receipt_id
    assert await moet.package_receipt("GT-unknown") is None


async def test_a_tampered_transcript_is_refused_with_the_reason(transcripts, keys, moet, store):
    # The Department signs a package whose transcript was changed after the school signed it.
    tampered = [with_xml(transcripts[0], changed_score(transcripts[0].xml)), transcripts[1]]
    package = await package_of(tampered, keys)
    with pytest.raises(DeliveryError) as info:
        await moet.deliver_package(package)
    assert info.value.permanent and "(422)" in str(info.value)
    assert "X0000 v1: XML: " in str(info.value) and "does not verify" in str(info.value)
    assert "X0036" not in str(info.value)
    assert store.packages == {} and store.accepted() == {}
    # A file swapped after the Department signed: the hash says so.
    good = await package_of(transcripts, keys)
    swapped = rezip(good.to_zip(), {good.entries[1].xml_name: changed_score(transcripts[1].xml)})
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{store.base_url}/api/v2/packages/{good.package_id}", data=swapped,
                            headers={"Authorization": f"Bearer {store.token}",
                                     "Content-Type": "application/zip"}) as resp:
            body = await resp.json()
    assert resp.status == 422
    assert body["errors"] == ["X0036 v1: hocba/002-X0036-v1.xml does not match the SHA-256 the Department "
                              "signed (it was changed or swapped after signing)"]


async def test_the_store_trusts_only_its_anchor_and_the_registered_certificate(transcripts, keys, tmp_path,
                                                                               roots, keys_dir):
    stranger = trust_roots_der((str(create_root(tmp_path / "other", "Another root")),))
    package = await package_of(transcripts, keys)
    for sim, expected in (
            (MoetSimulator(trust_roots=stranger), "does not chain to a trust anchor"),
            (MoetSimulator(trust_roots=roots, registered={"01": [roots[0]]}),
             "is not the one Department 01 registered")):
        await sim.start()
        adapter = MoetAdapter(MoetSettings.model_validate(sim.adapter_settings()), PluginContext("moet", tmp_path))
        await adapter.open()
        try:
            with pytest.raises(DeliveryError, match=expected) as info:
                await adapter.deliver_package(package)
            assert info.value.permanent
        finally:
            await adapter.close()
            await sim.stop()
    # The certificate the Department registered is accepted.
    certificate = (await keys.certificates(DEPT))[0]
    sim = MoetSimulator(trust_roots=roots, registered={"01": [certificate]})
    await sim.start()
    adapter = MoetAdapter(MoetSettings.model_validate(sim.adapter_settings()), PluginContext("moet", tmp_path))
    await adapter.open()
    try:
        assert not (await adapter.deliver_package(package)).duplicate
    finally:
        await adapter.close()
        await sim.stop()


# --- recall and cancel ------------------------------------------------------------------------

async def test_recall_and_cancel_need_a_reason_and_are_recorded(transcripts, keys, moet, store):
    package = await package_of(transcripts, keys)
    await moet.deliver_package(package)
    with pytest.raises(DeliveryError, match="a reason is required") as info:
        await moet.cancel("X0000", 1, "  ")
    assert info.value.permanent
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {store.token}"}) as http:
        async with http.post(f"{store.base_url}/api/v2/transcripts/X0000/versions/1/cancel", json={}) as resp:
            assert resp.status == 422 and (await resp.json())["errors"] == ["reason: required, a non-empty text"]
        async with http.post(f"{store.base_url}/api/v2/packages/{package.package_id}/recall",
                             json={"reason": ""}) as resp:
            assert resp.status == 422
    assert store.counters.cancels == 0 and store.counters.recalls == 0

    cancelled = await moet.cancel("X0000", 1, "Sai điểm môn Toán, trường đề nghị hủy")
    assert cancelled.receipt_id.startswith("MOET-HUY-") and not cancelled.duplicate
    assert store.transcripts[("X0000", 1)]["status"] == "cancelled"
    assert store.transcripts[("X0000", 1)]["reason"] == "Sai điểm môn Toán, trường đề nghị hủy"
    assert (await moet.cancel("X0000", 1, "again")).duplicate
    with pytest.raises(DeliveryError, match="404") as info:
        await moet.cancel("X9999", 1, "no such record")
    assert info.value.permanent

    recalled = await moet.recall(package.package_id, "Lớp 5B nộp nhầm danh sách")
    assert recalled.detail["status"] == "recalled" and not recalled.duplicate
    assert (await moet.recall(package.package_id, "twice")).receipt_id == recalled.receipt_id
    state = await moet.package_receipt(package.package_id)
    assert state.detail["status"] == "recalled" and state.detail["reason"] == "Lớp 5B nộp nhầm danh sách"
    by_record = {k: r.detail for k, r in state.transcripts.items()}
    assert by_record[("X0036", 1)]["status"] == "recalled"
    assert by_record[("X0000", 1)]["status"] == "cancelled"  # its own reason stays
    assert by_record[("X0000", 1)]["reason"] == "Sai điểm môn Toán, trường đề nghị hủy"
    with pytest.raises(DeliveryError, match="recalled with its package") as info:
        await moet.cancel("X0036", 1, "too late")
    assert info.value.permanent
    with pytest.raises(DeliveryError, match="was recalled \\(Lớp 5B nộp nhầm danh sách\\)") as info:
        await moet.deliver_package(package)
    assert info.value.conflict
    # The same versions cannot come back in another package: a correction is the next version.
    alone = await package_of(transcripts[1:], keys)
    with pytest.raises(DeliveryError, match="X0036 v1: this version was recalled") as info:
        await moet.deliver_package(alone)
    assert info.value.conflict
    # The correction: signed again as version 2, in a new package.
    data = with_subject_teachers(transcript(36))
    data.update(record_id="X0036", event="UPDATE", version=2, updated_at="2025-06-02T08:00:00")
    corrected = await sign_all(FMT.build(parse_transcript(data)), keys)
    receipt = await moet.deliver_package(await package_of([PackageItem("X0036", 2, corrected)], keys))
    assert receipt.transcripts[("X0036", 2)].detail["status"] == "accepted"
    assert store.accepted()["X0036"] == 2


# --- faults -----------------------------------------------------------------------------------

async def test_faults_are_transient_or_permanent_as_they_should_be(transcripts, keys, store, moet, tmp_path):
    package = await package_of(transcripts, keys)
    store.faults.fail_next_n = 1
    with pytest.raises(DeliveryError) as info:
        await moet.deliver_package(package)
    assert not info.value.permanent and "(503)" in str(info.value)
    store.faults.rate_limit_next_n = 1
    with pytest.raises(DeliveryError) as info:
        await moet.deliver_package(package)
    assert not info.value.permanent and info.value.retry_after == store.faults.retry_after_seconds
    # A PUT is idempotent, so aiohttp itself resends it once on a reused connection that drops.
    store.faults.drop_next_n_connections = 2
    with pytest.raises(DeliveryError, match="not confirmed") as info:
        await moet.deliver_package(package)
    assert not info.value.permanent
    store.faults.drop_next_n_connections = 0
    store.faults.reject_next_n = 1
    with pytest.raises(DeliveryError, match="injected refusal") as info:
        await moet.deliver_package(package)
    assert info.value.permanent
    assert store.packages == {}
    # The answer is lost after the store committed: the retry gets the original receipt.
    hasty = MoetAdapter(MoetSettings.model_validate({**store.adapter_settings(), "timeout": 0.5}),
                        PluginContext("moet", tmp_path))
    await hasty.open()
    store.faults.slow_seconds = 2
    try:
        with pytest.raises(DeliveryError, match="not confirmed") as info:
            await hasty.deliver_package(package)
        assert not info.value.permanent
    finally:
        await hasty.close()
        store.faults.slow_seconds = 0
    assert list(store.packages) == [package.package_id]
    assert (await moet.deliver_package(package)).duplicate
    bad_token = MoetAdapter(MoetSettings.model_validate({**store.adapter_settings(), "token": "wrong"}),
                            PluginContext("moet", tmp_path))
    await bad_token.open()
    try:
        with pytest.raises(DeliveryError, match="token rejected") as info:
            await bad_token.deliver_package(package)
        assert info.value.permanent
    finally:
        await bad_token.close()
    assert None in [a.status for a in store.attempts]
    assert [a.status for a in store.attempts if a.status is not None] == [503, 429, 422, 201, 200, 401]


# --- configuration ----------------------------------------------------------------------------

def test_the_departments_signer_must_be_defined():
    data = example()
    assert parse_config(data).department.code == "01"
    data["department"]["signer"] = "nobody"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any("department.signer: 'nobody' is not defined under signers" in e for e in info.value.errors), \
        info.value.errors
    data = example()
    data["department"]["code"] = "Hà Nội"
    with pytest.raises(ConfigError, match="department.code"):
        parse_config(data)


def test_the_test_pki_holds_the_departments_key(keys_dir):
    assert DEPT in signing_identities()
    assert (keys_dir[0] / "01.p12").exists()
    issue(keys_dir[0], [DEPT], PASSWORD)  # already there: left as it is


# --- hostile containers -----------------------------------------------------------------------

def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, body in members:
            z.writestr(name, body)
    return out.getvalue()


async def test_hostile_containers_are_refused_with_the_reason(transcripts, keys, roots):
    package = await package_of(transcripts[:1], keys)
    good = dict((n, package.files[n]) for n in package.files)
    with pytest.warns(UserWarning, match="Duplicate name"):   # zipfile writes it, with a warning
        twin_manifests = zip_of([("manifest.xml", package.manifest), ("manifest.xml", package.manifest)])
    cases = [
        (zip_of([("hocba/001-X0000-v1.xml", b"<x/>")]), "no manifest.xml in the container"),
        (zip_of([("manifest.xml", package.manifest), ("../../etc/passwd", b"x")]), "outside hocba/"),
        (twin_manifests, "occurs twice"),
        (zip_of([("manifest.xml", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "a">]><GOI_TIN_HOC_BA/>')]),
         "DOCTYPE"),
        (zip_of([("manifest.xml", b"<GOI_TIN_HOC_BA PHIENBAN_DINHDANG='1.0'/>")]), "manifest.xml does not validate"),
    ]
    for data, reason in cases:
        report = await verify_package(data, roots)
        assert not report.ok and reason in report.problems[0], (reason, report.problems)
    # A member declaring more than the limit is not unpacked at all.
    big = zip_of([("manifest.xml", package.manifest), *good.items()])
    with pytest.raises(PackageError, match="more than 1000"):
        ClassPackage.from_zip(big, max_bytes=1000)
    # A second signature, or the Department's moved inside what it signs, is not the Department's.
    root = parse(package.manifest).getroot()
    signature = root.find(f"{{{DS}}}Signature")
    moved = etree.fromstring(package.manifest)
    moved.find("THONG_TIN_GOI").append(moved.find(f"{{{DS}}}Signature"))
    twice = etree.fromstring(package.manifest)
    twice.append(etree.fromstring(etree.tostring(signature)))
    for manifest, reason in ((etree.tostring(moved), "does not validate"),
                             (etree.tostring(twice), "does not validate")):
        report = await verify_package(zip_of([("manifest.xml", manifest), *good.items()]), roots)
        assert not report.ok and reason in " ".join(report.problems), report.problems
    unvalidated = dataclasses.replace(package, manifest=etree.tostring(twice))
    report = await verify_package(unvalidated, roots)
    assert "the document carries 2 signatures; exactly one is expected" in " ".join(report.problems)
    report = await verify_package(dataclasses.replace(package, manifest=etree.tostring(moved)), roots)
    assert "the signature must be the root's last child" in " ".join(report.problems), report.problems
    # The Department signed a member that is not XML at all: a verdict naming it, not a crash.
    junk = b"not xml at all"
    unsigned = build_manifest(transcripts[:1], FMT, department_code="01", department_name=DEPT.name)
    entry = unsigned.entries[0]
    manifest = unsigned.manifest.replace(entry.xml_sha256.encode(), hashlib.sha256(junk).hexdigest().encode())
    manifest = manifest.replace(f'KICHTHUOC="{entry.xml_size}"'.encode(), f'KICHTHUOC="{len(junk)}"'.encode())
    manifest = await sign_enveloped(manifest, DEPT, keys, signature_id="sig-sogd")
    members = [("manifest.xml", manifest), (entry.xml_name, junk), (entry.pdf_name, unsigned.files[entry.pdf_name])]
    report = await verify_package(zip_of(members), roots)
    assert report.problems == () and report.transcripts["X0000 v1"][0].startswith("X0000 v1: XML: cannot be read")
