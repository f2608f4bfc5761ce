"""The XML học bạ: its schema, its XAdES signatures checked by xmlsec1 (an independent validator),
and verification that binds each signature, in XML and PDF alike, to the person the record names.
Real keys from the session's throwaway PKI; one xmlsec1 call per signature node."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from hub.contracts import PluginContext, SigningIdentity
from hub.documents.binding import verify_file
from hub.documents.render import render_pdf
from hub.documents.signing import identity_for, request_for
from hub.documents.verify import load_certs
from hub.documents.xmldsig import DS, sign_slots
from hub.documents.xmlsafe import UnsafeXml, parse
from hub.kit.synthetic import transcript, with_subject_teachers
from hub.plugins import document_formats
from hub.records import parse_transcript
from signers.pkcs12.signer import Pkcs12Signer
from tests.conftest import PASSWORD, deliver_to, hub_config, pull_from, worked_through

FMT = document_formats()["xml"].cls()
STAGES = ("subject_teacher", "homeroom_teacher", "principal", "school_seal")
XMLSEC_IDS = ["--id-attr:Id", "DU_LIEU_HOC_BA", "--id-attr:Id", "THONG_TIN_HOC_BA", "--id-attr:Id", "DIEM_TONG_KET",
              "--id-attr:Id", "http://uri.etsi.org/01903/v1.3.2#:SignedProperties",
              "--id-attr:Id", f"{DS}:KeyInfo", "--id-attr:Id", f"{DS}:Signature"]
needs_xmlsec = pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 is not installed")


def record(index: int, teachers: bool = True):
    data = transcript(index)
    if teachers:
        data = with_subject_teachers(data)
    data.update(record_id=f"X{index:04d}", event="NEW", version=1, updated_at="2025-06-01T08:00:00")
    return parse_transcript(data)


def signer(directory: Path) -> Pkcs12Signer:
    return Pkcs12Signer(Pkcs12Signer.Settings(directory=directory, password=PASSWORD),
                        PluginContext("keys", directory))


async def sign_all(doc: bytes, keys: Pkcs12Signer, stages=STAGES, swap: dict | None = None) -> bytes:
    """Sign every stage in order; ``swap`` maps a role to the identity whose key signs instead."""
    for role in stages:
        slots = [s for s in FMT.slots(doc) if s.role == role and s.identity.personal_id or
                 (s.role == role == "school_seal")]
        if swap and role in swap:
            slots = [dataclasses.replace(s, identity=swap[role]) for s in slots]
        doc = await sign_slots(doc, slots, keys)
    return doc


def xmlsec(path: Path, root: Path, signature_id: str) -> subprocess.CompletedProcess:
    # One call per signature: --node-id selects the ds:Signature to check; the document is whole.
    return subprocess.run(["xmlsec1", "--verify", "--trusted-pem", str(root), *XMLSEC_IDS,
                           "--node-id", signature_id, str(path)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def signed(pki, tmp_path_factory):
    """A primary and a secondary transcript, every stage signed, and their PDF twins."""
    directory, _root = pki
    keys = signer(directory)
    out = {}

    async def make():
        await keys.open()
        for index in (0, 3):
            rec = record(index)
            doc = await sign_all(FMT.build(rec), keys)
            pdf = render_pdf(rec, xml=FMT.build(rec))
            for role in ("homeroom_teacher", "principal", "school_seal"):
                [pdf] = await keys.sign([request_for(rec, pdf, role)])
            out[index] = (rec, doc, pdf)

    asyncio.run(make())
    return out


def test_every_document_validates_against_the_shipped_schema():
    for index in range(8):
        for teachers in (True, False):
            doc = FMT.build(record(index, teachers))
            assert FMT.schema_errors(doc) == [], index
    broken = FMT.build(record(3)).replace(b"<DTBCN>", b"<DTBCN>1", 1)  # 17.5 > 10
    assert FMT.schema_errors(broken)


def test_incoming_xml_with_entities_or_a_dtd_is_refused():
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><HOC_BA>&b;</HOC_BA>'
    with pytest.raises(UnsafeXml, match="DOCTYPE"):
        parse(bomb)
    external = b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><HOC_BA/>'
    with pytest.raises(UnsafeXml):
        parse(external)


def test_slots_name_every_subject_teacher_and_sit_outside_what_they_sign():
    doc = FMT.build(record(3))
    slots = FMT.slots(doc)
    teachers = [s for s in slots if s.role == "subject_teacher"]
    assert len(teachers) == len(record(3).subjects)
    assert all(s.identity.personal_id and s.reference.startswith("mon-") for s in teachers)
    root = parse(doc).getroot()
    for slot in slots:
        target = root.xpath("//*[@Id=$id]", id=slot.reference)[0]
        assert root.find(slot.path) not in target.iter(), slot.name


@needs_xmlsec
def test_xmlsec1_accepts_every_signature_and_refuses_a_changed_score(signed, pki, tmp_path):
    _, root = pki
    for index, (_, doc, _) in signed.items():
        path = tmp_path / f"{index}.xml"
        path.write_bytes(doc)
        ids = parse(doc).getroot().xpath("//ds:Signature/@Id", namespaces={"ds": DS})
        assert len(ids) == (3 if index == 0 else 3 + 12)
        for sid in ids:
            done = xmlsec(path, root, sid)
            assert done.returncode == 0 and "SignedInfo References (ok/all): 3/3" in done.stderr, (sid, done.stderr)
    _, doc, _ = signed[3]
    tampered = tmp_path / "tampered.xml"
    changed = parse(doc).getroot()
    first = changed.find("DU_LIEU_HOC_BA/DIEM_TONG_KET")
    first.find("DTBCN").text = "10.0"
    tampered.write_bytes(etree.tostring(changed))
    teacher = "sig-gvbm-" + first.get("Id").removeprefix("mon-")   # who signed that subject
    for sid in (teacher, "sig-cbql", "sig-phathanh"):
        assert xmlsec(tampered, root, sid).returncode != 0, sid
    assert xmlsec(tampered, root, "sig-gvcn").returncode == 0  # the homeroom teacher signs no scores


def _verdict(data: bytes, root: Path):
    return asyncio.run(verify_file(data, trust_roots=[c.dump() for c in load_certs(root)]))


def test_both_documents_verify_against_the_record(signed, pki):
    _, root = pki
    for _, doc, pdf in signed.values():
        for data in (doc, pdf):
            verdict = _verdict(data, root)
            assert verdict.ok and verdict.trust_checked, verdict.lines()
    untrusted = asyncio.run(verify_file(signed[0][1]))
    assert untrusted.ok and not untrusted.trust_checked
    assert "not checked against a trust anchor" in "\n".join(untrusted.lines())


def _reasons(verdict) -> str:
    return "\n".join(f"{r.where}: {r.en} / {r.vi}" for r in verdict.reasons)


def test_wrong_teacher_and_another_schools_key_are_rejected_in_both_formats(pki):
    directory, root = pki
    keys = signer(directory)
    rec = record(3)
    other_teacher = identity_for(record(2), "homeroom_teacher")   # a teacher of another school
    other_school = identity_for(record(2), "school_seal")

    async def make(role: str, who: SigningIdentity):
        await keys.open()
        doc = await sign_all(FMT.build(rec), keys, swap={role: who})
        pdf = render_pdf(rec)
        for r in ("homeroom_teacher", "principal", "school_seal"):
            request = request_for(rec, pdf, r)
            if r == role:
                request = dataclasses.replace(request, identity=who)
            [pdf] = await keys.sign([request])
        return doc, pdf

    for role, who, where, words in (("homeroom_teacher", other_teacher, ("GVCN", "homeroom_teacher"), "personal id"),
                                    ("school_seal", other_school, ("KY_PHAT_HANH", "school_seal"),
                                     "organisation certificate of school 01004001")):
        doc, pdf = asyncio.run(make(role, who))
        for data, slot in ((doc, where[0]), (pdf, where[1])):
            verdict = _verdict(data, root)
            assert not verdict.ok
            assert any(r.where == slot and words in r.en for r in verdict.reasons), _reasons(verdict)


def test_a_stripped_last_signature_is_a_missing_stage_in_both_formats(signed, pki):
    _, root = pki
    _, doc, pdf = signed[3]
    tree = parse(doc).getroot()
    slot = tree.find("PHAT_HANH_HOC_BA/KY_PHAT_HANH")
    slot.remove(slot[0])
    verdict = _verdict(etree.tostring(tree), root)
    assert [r.where for r in verdict.reasons] == ["KY_PHAT_HANH"], _reasons(verdict)
    assert "missing" in verdict.reasons[0].en
    # The PDF without its last incremental update: the school's field is there, unsigned.
    previous = pdf[:pdf.rindex(b"%%EOF", 0, len(pdf) - 8) + len(b"%%EOF\n")]
    verdict = _verdict(previous, root)
    assert any(r.where == "school_seal" and "missing" in r.en for r in verdict.reasons), _reasons(verdict)


def test_a_signature_moved_into_the_element_it_references_is_rejected(signed, pki):
    # PDF signatures have no such placement: this is the XML's rule (validators refuse it).
    _, root = pki
    _, doc, _ = signed[0]
    tree = parse(doc).getroot()
    signature = tree.find("DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/GVCN")[0]
    tree.find("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA").append(signature)
    verdict = _verdict(etree.tostring(tree), root)
    text = _reasons(verdict)
    assert not verdict.ok
    assert "in no signature slot" in text and "GVCN" in text and "missing" in text


def test_a_changed_score_is_rejected_in_both_formats(signed, pki):
    _, root = pki
    _, doc, pdf = signed[3]
    tree = parse(doc).getroot()
    first = tree.find("DU_LIEU_HOC_BA/DIEM_TONG_KET")
    first.find("DTBCN").text = "10.0"
    verdict = _verdict(etree.tostring(tree), root)
    slot = f"DANH_SACH_GVBM/GVBM[@Id='gvbm-{first.get('Id').removeprefix('mon-')}']"  # that subject's teacher
    assert any(r.where == slot and "Digest mismatch" in r.en
               for r in verdict.reasons), _reasons(verdict)
    assert any(r.where == "CBQL" for r in verdict.reasons)
    # The PDF's record attachment is compressed inside the signed revision: flip a byte of it.
    data = bytearray(pdf)
    at = pdf.index(b"/EmbeddedFile")
    at = pdf.index(b"stream", at) + 20
    data[at] ^= 0x01
    verdict = _verdict(bytes(data), root)
    assert not verdict.ok and any("modified" in r.en or "record" in r.en for r in verdict.reasons), _reasons(verdict)


# --- documents that arrive already signed ------------------------------------------------------

async def test_xml_signed_on_arrival_is_validated_and_only_missing_stages_are_added(pki, tmp_path):
    """A vendor's software delivered the XML signed by the subject teachers and the homeroom
    teacher: the hub keeps those signatures, adds the principal's and the school's, and
    quarantines a document whose signature is by someone else or sits in the wrong place."""
    import json

    from adapters.ttdlqg.simulator import TtdlqgSimulator
    from adapters.vnpt.simulator import VnptSimulator
    from hub import lifecycle as lc
    from hub import store as st
    from hub.contracts import RawRecord

    directory, root = pki
    keys = signer(directory)
    await keys.open()
    vendor, central = VnptSimulator(records=0), TtdlqgSimulator()
    await vendor.start()
    await central.start()
    config = hub_config(tmp_path / "data", directory, adapters=[pull_from(vendor)], destination=deliver_to(central),
                        attempts=2, roles=STAGES, trust=[root])
    store = st.Store(config.store_path)
    kept = {}
    for i, problem in enumerate(("none", "wrong_teacher", "moved")):
        [pk] = store.receive("school-a", [RawRecord(f"src-{i}", json.dumps({"i": i}).encode())])
        row = store.get(pk)
        data = with_subject_teachers(transcript(3 + 4 * i))
        data.update(record_id=row.record_id, version=row.version, event=row.event,
                    updated_at=row.received_at[:19])
        rec = parse_transcript(data)
        # A teacher of another school signs in the homeroom teacher's slot.
        swap = {"homeroom_teacher": identity_for(record(2), "homeroom_teacher")} if problem == "wrong_teacher" else None
        doc = await sign_all(FMT.build(rec), keys, ("subject_teacher", "homeroom_teacher"), swap)
        if problem == "moved":
            tree = parse(doc).getroot()
            tree.find("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA").append(tree.find("DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/GVCN")[0])
            doc = etree.tostring(tree)
        kept[f"src-{i}"] = doc
        store.advance(pk, lc.RECEIVED, lc.NORMALIZED, school_code=rec.school_code, normalized=rec.model_dump(mode="json"))
        store.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=render_pdf(rec, xml=FMT.build(rec)), xml=doc)
    store.close()
    try:
        rows = await worked_through(config)
    finally:
        await vendor.stop()
        await central.stop()

    good, wrong, moved = rows["src-0"], rows["src-1"], rows["src-2"]
    assert good.state == lc.DELIVERED, good.errors
    arrived = parse(kept["src-0"]).getroot()
    final = parse(good.xml).getroot()
    for path in ("DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/GVCN", "DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/DANH_SACH_GVBM"):
        assert etree.tostring(final.find(path)) == etree.tostring(arrived.find(path))  # kept, not redone
    verdict = await verify_file(good.xml, trust_roots=[c.dump() for c in load_certs(root)])
    assert verdict.ok, verdict.lines()
    assert central.accepted()[good.record_id] == good.version
    assert wrong.state == lc.QUARANTINED
    assert any(e.startswith("XML GVCN:") and "personal id" in e for e in wrong.errors), wrong.errors
    assert moved.state == lc.QUARANTINED
    assert any("in no signature slot" in e for e in moved.errors), moved.errors


@needs_xmlsec
async def test_xades_t_carries_a_timestamp_over_the_signature_value(pki, tmp_path):
    # XAdES-T when the step asks for B-T: the loopback TSA stamps the canonical SignatureValue.
    from hub.kit.tsa import TrustServices

    directory, root = pki
    services = TrustServices(directory)
    await services.start()
    keys = signer(directory)
    await keys.open()
    try:
        doc = FMT.build(record(0))
        slots = [s for s in FMT.slots(doc) if s.role == "homeroom_teacher"]
        doc = await sign_slots(doc, slots, keys, level="B-T", timestamp_url=services.tsa_url)
    finally:
        await services.stop()
    from hub.documents.xmldsig import verify_document

    report = await verify_document(doc, FMT, [c.dump() for c in load_certs(root)])
    [sig] = report.signatures
    assert sig.valid and not sig.problems and sig.level == "XAdES-T" and sig.timestamp_time is not None
    path = tmp_path / "t.xml"
    path.write_bytes(doc)
    assert xmlsec(path, root, "sig-gvcn").returncode == 0
    # A token moved from another signature does not cover this one's value.
    tree = parse(doc).getroot()
    value = tree.find(".//{%s}SignatureValue" % DS)
    value.text = value.text[:-4] + ("AAA=" if not value.text.endswith("AAA=") else "BBB=")
    report = await verify_document(etree.tostring(tree), FMT, [c.dump() for c in load_certs(root)])
    assert any("timestamp does not cover" in p for p in report.signatures[0].problems)


def test_signing_status_counts_waiting_transcripts_and_names_who_has_not_signed(signed, pki):
    # Two transcripts of one class: one waits for its subject teachers (one has signed), one for
    # the principal. The operator's view says so per class, naming the teachers left.
    from types import SimpleNamespace

    from hub import lifecycle as lc
    from hub.engine.signing_status import waiting_signatures

    directory, _ = pki
    keys = signer(directory)
    rec = record(3)
    doc = FMT.build(rec)

    async def make():
        await keys.open()
        first = [s for s in FMT.slots(doc) if s.role == "subject_teacher"][:1]
        return await sign_slots(doc, first, keys), await sign_all(doc, keys, STAGES[:2])

    partly, teachers_done = asyncio.run(make())
    _, full, _ = signed[3]
    rows = [SimpleNamespace(state=lc.RENDERED, normalized=rec.model_dump(mode="json"), school_code=rec.school_code,
                            xml=partly),
            SimpleNamespace(state=lc.signed("homeroom_teacher"), normalized=rec.model_dump(mode="json"),
                            school_code=rec.school_code, xml=teachers_done),
            SimpleNamespace(state=lc.DELIVERED, normalized=rec.model_dump(mode="json"), school_code=rec.school_code,
                            xml=full)]
    [entry] = waiting_signatures(rows, STAGES, FMT)
    assert (entry["school_code"], entry["class_name"], entry["transcripts"]) == (rec.school_code, rec.class_name, 2)
    assert entry["waiting"] == {"subject_teacher": 1, "principal": 1}
    left = {(u["role"], u["subject"]) for u in entry["unsigned"]}
    assert ("subject_teacher", rec.subjects[0].subject_code) not in left
    assert {("subject_teacher", s.subject_code) for s in rec.subjects[1:]} <= left
    assert ("principal", None) in left


@needs_xmlsec
def test_a_local_key_step_signs_both_documents_in_one_job_and_refuses_before_signing(pki, tmp_path):
    # hub.documents.xmldsig.sign_step with keys on this machine: the step's XML slot and PDF
    # signature come from one job (LocalKeySigner.sign_documents); xmlsec1 and pyHanko accept
    # them. An identity without a key refuses the whole step before anything is signed.
    from hub.documents.signing import SigningError
    from hub.documents.verify import verify_blocking
    from hub.documents.xmldsig import sign_step

    directory, root = pki
    keys = signer(directory)
    rec = record(0)
    doc, pdf = FMT.build(rec), render_pdf(rec, xml=FMT.build(rec))
    slots = [s for s in FMT.slots(doc) if s.role == "homeroom_teacher"]
    request = request_for(rec, pdf, "homeroom_teacher")

    async def step(requests):
        await keys.open()
        return await sign_step(doc, slots, requests, keys)

    xml, [signed_pdf] = asyncio.run(step([request]))
    path = tmp_path / "step.xml"
    path.write_bytes(xml)
    result = xmlsec(path, root, slots[0].signature_id)
    assert result.returncode == 0, result.stderr
    report = verify_blocking(signed_pdf, (load_certs(root)[0].dump(),))
    assert report.ok and [s.field for s in report.signatures] == ["homeroom_teacher"]

    stranger = SigningIdentity("principal", "Người Lạ", rec.school_code, "099999999999")
    with pytest.raises(SigningError, match="no key for principal"):
        asyncio.run(step([request, dataclasses.replace(request, identity=stranger)]))
