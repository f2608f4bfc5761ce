"""Before a step signs, the signer's certificate is checked with its CA (OCSP or CRL, the
addresses the certificate names, served on loopback by the test PKI's services): a revoked
certificate stops the record at that step with the reason; others sign and are delivered."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import deliver_to, hub_config, only_plugins, pull_from, started_hub
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub import store as st
from hub.contracts import RawRecord
from hub.documents.signing import certificate_problem, identity_for
from hub.kit import pki
from hub.kit.synthetic import department_identity, transcript
from hub.kit.tsa import TrustServices
from hub.records import parse_transcript

PASSWORD = "revocation-test-password"
ROLES = ("homeroom_teacher", "principal", "school_seal")
DEPARTMENT = department_identity("01")


def _chain(directory, identity) -> tuple[bytes, ...]:
    from cryptography.hazmat.primitives.serialization import Encoding

    _, cert, extra = pkcs12.load_key_and_certificates((directory / f"{identity.key}.p12").read_bytes(),
                                                      PASSWORD.encode())
    return (cert.public_bytes(Encoding.DER), *(c.public_bytes(Encoding.DER) for c in extra))


async def test_a_revoked_signer_stops_the_record_at_its_step(tmp_path):
    directory = tmp_path / "pki"
    services = TrustServices(directory)
    await services.start()
    vendor, central = VnptSimulator(records=0), TtdlqgSimulator()
    await vendor.start()
    await central.start()
    try:
        records = {}
        for index in (0, 1):  # two schools: one principal's certificate is revoked, the other's is good
            data = transcript(index)
            records[index] = data
            rec = parse_transcript({**data, "record_id": "x", "event": "NEW", "version": 1,
                                    "updated_at": "2025-06-01T08:00:00"})
            pki.issue(directory, [identity_for(rec, r) for r in ROLES], PASSWORD, services_url=services.url)
        revoked = identity_for(parse_transcript({**records[0], "record_id": "x", "event": "NEW", "version": 1,
                                                 "updated_at": "2025-06-01T08:00:00"}), "principal")
        pki.issue(directory, [DEPARTMENT], PASSWORD, services_url=services.url)  # it signs the class packages
        cert = x509.load_der_x509_certificate(_chain(directory, revoked)[0])
        services.revoke(cert.serial_number)
        root = directory / pki.ROOT_CERT

        # The check itself: revoked, good, and a CA that does not answer (never cached).
        problem, keep = await certificate_problem(_chain(directory, revoked))
        assert "revoked" in problem and keep, problem
        good = identity_for(parse_transcript({**records[1], "record_id": "x", "event": "NEW", "version": 1,
                                              "updated_at": "2025-06-01T08:00:00"}), "principal")
        assert await certificate_problem(_chain(directory, good)) == ("", True)
        assert services.counters.ocsp + services.counters.crl >= 2

        # The Ministry's store takes class packages: the XML inside, the Department's signature.
        config = hub_config(tmp_path / "data", directory, adapters=[pull_from(vendor)], destination=deliver_to(central),
                            attempts=2, roles=ROLES, password=PASSWORD, trust=[root], documents=["xml", "pdf"],
                            department={"code": DEPARTMENT.school_code, "name": DEPARTMENT.name, "signer": "keys"})
        store = st.Store(config.store_path)
        for index, data in records.items():
            [pk] = store.receive("school-a", [RawRecord(f"src-{index}", json.dumps({"i": index}).encode())])
            row = store.get(pk)
            rec = parse_transcript({**data, "record_id": row.record_id, "version": row.version,
                                    "event": row.event, "updated_at": row.received_at[:19]})
            store.advance(pk, lc.RECEIVED, lc.NORMALIZED, school_code=rec.school_code,
                          normalized=rec.model_dump(mode="json"))
        store.close()
        async with started_hub(config, pull=False) as hub:
            await asyncio.wait_for(hub.wait_idle(), 120)
            rows = {r.source_id: r for r in hub.store.rows()}
            history = hub.store.history(rows["src-0"].id) if hasattr(hub.store, "history") else None
    finally:
        await vendor.stop()
        await central.stop()
        await services.stop()

    stopped, fine = rows["src-0"], rows["src-1"]
    assert fine.state == lc.DELIVERED, fine.errors
    assert stopped.state == lc.FAILED
    assert any(e.startswith("principal:") and "revoked" in e and revoked.name in e for e in stopped.errors), \
        stopped.errors
    # It stopped at the principal's step: the homeroom teacher had signed, the principal had not.
    assert b"sig-gvcn" in stopped.xml and b'Id="sig-cbql"' not in stopped.xml
    if history is not None:
        assert any(lc.SIGNED_PREFIX + "homeroom_teacher" in str(h) for h in history)


async def test_a_ca_that_does_not_answer_is_not_a_good_answer(tmp_path):
    directory = tmp_path / "pki"
    services = TrustServices(directory)
    await services.start()
    rec = parse_transcript({**transcript(0), "record_id": "x", "event": "NEW", "version": 1,
                            "updated_at": "2025-06-01T08:00:00"})
    identity = identity_for(rec, "principal")
    pki.issue(directory, [identity], PASSWORD, services_url=services.url)
    await services.stop()  # the CA's OCSP responder and CRL are gone
    problem, keep = await certificate_problem(_chain(directory, identity))
    assert "cannot be checked" in problem and not keep, problem


@pytest.fixture(autouse=True)
def only_these_plugins():
    with only_plugins("vnpt", "ttdlqg", "pkcs12", "xml"):
        yield
