"""XML học bạ delivered already signed by the school's software (push and misa): the vendor's
signatures, made with the vendor's own test PKI, are validated against the configured trust
anchors and the record, kept byte for byte, and the hub signs only the stages left. A foreign
key, a broken signature value or signed content that is not the record quarantines the record
naming the slot or the element. xmlsec1 checks every signature of a delivered document."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess

import pytest
from lxml import etree

from adapters.misa.simulator import MisaSimulator
from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.push.simulator import PushSimulator, ingest_url
from hub import lifecycle as lc
from hub.documents.binding import verify_file
from hub.documents.render import XML_ATTACHMENT_NAME
from hub.documents.verify import extract_attachment, load_certs
from hub.documents.xmldsig import DS, unsigned_differences
from hub.documents.xmlsafe import parse
from hub.kit.pki import sign_xml
from hub.plugins import document_formats
from hub.store import record_id_for
from hub.web.server import serving_hub
from tests.conftest import deliver_to, hub_config, only_plugins, pull_from
from tests.test_xml import XMLSEC_IDS

STAGES = ("subject_teacher", "homeroom_teacher", "principal", "school_seal")
VENDOR_PASSWORD = "vendor-test-password"
GVCN = "DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/GVCN"
GVBM = "DU_LIEU_HOC_BA/DANH_SACH_THONG_TIN_KY/DANH_SACH_GVBM"


@pytest.fixture(autouse=True)
def only_these_plugins():
    with only_plugins("push", "misa", "ttdlqg", "pkcs12", "xml"):
        yield


def _decoded(envelope: dict) -> bytes:
    return base64.b64decode(envelope["signed_xml"])


def _encoded(document: bytes) -> str:
    return base64.b64encode(document).decode("ascii")


def test_unsigned_differences_name_the_element():
    from hub.kit.synthetic import transcript
    from hub.records import parse_transcript

    fmt = document_formats()["xml"].cls()
    data = {**transcript(0), "record_id": "R1", "version": 1, "event": "NEW", "updated_at": "2025-06-01T07:00:00"}
    built = fmt.build(parse_transcript(data))
    assert unsigned_differences(built, built) == []
    tree = parse(built).getroot()
    tree.find("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA/HOC_SINH/HOVATEN").text = "Người Khác"
    [diff] = unsigned_differences(built, etree.tostring(tree))
    assert "HOC_SINH/HOVATEN" in diff and "Người Khác" in diff


async def test_vendor_signed_xml_is_kept_and_only_the_missing_stages_are_added(pki, tmp_path):
    directory, hub_root = pki
    misa = MisaSimulator(records=4)
    misa_root = misa.sign_xml("school-misa", tmp_path / "misa-pki", VENDOR_PASSWORD)
    sender = PushSimulator(records=6)
    push_root = sender.sign_xml("school-push", tmp_path / "push-pki", VENDOR_PASSWORD)
    envelopes = sender.envelopes()
    # 1: signed in the school's software with a key from a CA the Department does not trust.
    e = envelopes[1]
    central = {**sender.seeded(1), "record_id": record_id_for("school-push", e["source_id"]), "version": 1,
               "event": "NEW", "updated_at": e["updated_at"]}
    e["signed_xml"] = _encoded(sign_xml(central, ("subject_teacher", "homeroom_teacher"), tmp_path / "foreign",
                                        VENDOR_PASSWORD, root_name="Foreign Test CA"))
    # 2: the signed XML gives the student another name than the record (signed content ≠ record).
    tree = parse(_decoded(envelopes[2])).getroot()
    tree.find("DU_LIEU_HOC_BA/THONG_TIN_HOC_BA/HOC_SINH/HOVATEN").text = "Người Khác"
    envelopes[2]["signed_xml"] = _encoded(etree.tostring(tree))
    # 4: the homeroom teacher's signature value is damaged (the content is the record's).
    tree = parse(_decoded(envelopes[4])).getroot()
    value = tree.find(f"{GVCN}/{{{DS}}}Signature/{{{DS}}}SignatureValue")
    value.text = ("B" if value.text[0] == "A" else "A") + value.text[1:]
    envelopes[4]["signed_xml"] = _encoded(etree.tostring(tree))

    # 5: the principal signed in the school's software while the homeroom teacher has not.
    e = envelopes[5]
    central = {**sender.seeded(5), "record_id": record_id_for("school-push", e["source_id"]), "version": 1,
               "event": "NEW", "updated_at": e["updated_at"]}
    e["signed_xml"] = _encoded(sign_xml(central, ("principal",), tmp_path / "push-pki", VENDOR_PASSWORD))
    central_store = TtdlqgSimulator()
    await misa.start()
    await central_store.start()
    config = hub_config(tmp_path / "data", directory, attempts=2, roles=STAGES, trust=[hub_root, misa_root, push_root],
                        adapters=[pull_from(misa, "school-misa", "misa"),
                                  {"name": "school-push", "type": "push", "settings": sender.adapter_settings()}],
                        destination=deliver_to(central_store))
    try:
        async with serving_hub(config, drain_timeout=5) as (hub, base):
            answer = await sender.send(ingest_url(base, "school-push"), envelopes)
            assert answer.status == 202, answer.body
            await asyncio.wait_for(hub.wait_idle(), 180)
            rows = {(r.adapter, r.source_id): r for r in hub.store.rows()}
    finally:
        await sender.stop()
        await misa.stop()
        await central_store.stop()

    roots = [c.dump() for c in load_certs([hub_root, misa_root, push_root])]
    delivered = [(("school-push", envelopes[i]["source_id"]), _decoded(envelopes[i])) for i in (0, 3)]
    delivered += [(("school-misa", misa.source_id(i)), base64.b64decode(misa.vendor_record(i)["signedXml"]))
                  for i in range(4)]
    for key, arrived in delivered:
        row = rows[key]
        assert row.state == lc.DELIVERED, (key, row.state, row.errors)
        final, before = parse(row.xml).getroot(), parse(arrived).getroot()
        # The vendor's signatures are kept as they came, not redone by the hub's keys.
        assert etree.tostring(final.find(GVCN)) == etree.tostring(before.find(GVCN))
        if before.find(GVBM) is not None:
            assert etree.tostring(final.find(GVBM)) == etree.tostring(before.find(GVBM))
            assert len(final.findall(f"{GVBM}/GVBM/{{{DS}}}Signature")) == len(final.findall(f"{GVBM}/GVBM"))
        # The hub added the principal's and the school's.
        assert final.find(f"PHAT_HANH_HOC_BA/CBQL/{{{DS}}}Signature") is not None
        assert final.find(f"PHAT_HANH_HOC_BA/KY_PHAT_HANH/{{{DS}}}Signature") is not None
        verdict = await verify_file(row.xml, trust_roots=roots)
        assert verdict.ok, verdict.lines()
        # The PDF twin carries the XML as it arrived, teachers' signatures included, and holds.
        assert extract_attachment(row.pdf, XML_ATTACHMENT_NAME) == arrived
        verdict = await verify_file(row.pdf, trust_roots=roots)
        assert verdict.ok, verdict.lines()
        # Without the vendor's root the same document does not verify: trust is really checked.
        verdict = await verify_file(row.xml, trust_roots=[c.dump() for c in load_certs(hub_root)])
        assert not verdict.ok and any(r.where == "GVCN" and "trust anchor" in r.en for r in verdict.reasons)
    assert sum(1 for _, a in delivered if parse(a).getroot().find(GVBM) is not None) >= 1  # secondary covered

    foreign = rows[("school-push", envelopes[1]["source_id"])]
    assert foreign.state == lc.QUARANTINED
    assert any(e.startswith("XML GVCN:") and "trust anchor" in e for e in foreign.errors), foreign.errors
    mismatch = rows[("school-push", envelopes[2]["source_id"])]
    assert mismatch.state == lc.QUARANTINED
    assert any("HOC_SINH/HOVATEN" in e and "Người Khác" in e for e in mismatch.errors), mismatch.errors
    broken = rows[("school-push", envelopes[4]["source_id"])]
    assert broken.state == lc.QUARANTINED
    assert any(e.startswith("XML GVCN:") and "does not verify" in e for e in broken.errors), broken.errors

    early = rows[("school-push", envelopes[5]["source_id"])]
    assert early.state == lc.QUARANTINED
    assert any(e.startswith("XML CBQL:") and "GVCN" in e and "order" in e for e in early.errors), early.errors

    if shutil.which("xmlsec1") is None:
        pytest.skip("xmlsec1 is not installed")
    row = rows[("school-misa", misa.source_id(3))]
    path = tmp_path / "misa-3.xml"
    path.write_bytes(row.xml)
    ids = [s.get("Id") for s in parse(row.xml).getroot().iter(f"{{{DS}}}Signature")]
    assert len(ids) >= 4
    for sid in ids:
        # One call per signature; the vendor's root and the hub's are both trusted, as configured.
        done = subprocess.run(["xmlsec1", "--verify", "--trusted-pem", str(hub_root), "--trusted-pem",
                               str(misa_root), *XMLSEC_IDS, "--node-id", sid, str(path)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (sid, done.stderr[-800:])
    # The vendor's signatures chain to the vendor's root alone, the hub's to the hub's alone.
    vendor_only = subprocess.run(["xmlsec1", "--verify", "--trusted-pem", str(misa_root), *XMLSEC_IDS,
                                  "--node-id", "sig-gvcn", str(path)], capture_output=True, text=True)
    assert vendor_only.returncode == 0, vendor_only.stderr[-800:]
    hub_only = subprocess.run(["xmlsec1", "--verify", "--trusted-pem", str(hub_root), *XMLSEC_IDS,
                               "--node-id", "sig-gvcn", str(path)], capture_output=True, text=True)
    assert hub_only.returncode != 0
