"""The ``csc`` remote signer against the CSC simulator over real HTTP on loopback.

Real signatures (per-user keys from a throwaway PKI), checked by pyHanko's validator and by
poppler's pdfsig; the service's approval, rejection, expiry, batch limits and faults are the
simulator's, switched per test.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hub.contracts import SIGNING_ROLES, PluginContext, PluginError
from hub.documents.render import render_pdf
from hub.documents.signing import SigningError, identity_for, request_for
from hub.documents.verify import load_certs, verify_pdf
from hub.kit import pki
from hub.kit.synthetic import transcript
from hub.records import parse_transcript
from signers.csc.signer import CscSigner
from signers.csc.simulator import CscSimulator

PASSWORD = "csc-test-password"


def record(index: int):
    data = transcript(index)
    data.update(record_id=f"C{index:04d}", event="NEW", version=1, updated_at="2025-06-01T08:00:00")
    return parse_transcript(data)


# Six transcripts of one school (index step 4 keeps the school): one principal, one seal,
# six homeroom teachers.
RECORDS = [record(i) for i in range(0, 24, 4)]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("csc-pki")
    root = pki.ensure_pki(directory, [identity_for(r, role) for r in RECORDS for role in SIGNING_ROLES], PASSWORD)
    return directory, root


@pytest.fixture
async def service(keys):
    sim = CscSimulator(pki_dir=keys[0], password=PASSWORD, poll_interval=0.05)
    await sim.start()
    yield sim
    await sim.stop()


def make_signer(sim: CscSimulator, executor=None, **settings) -> CscSigner:
    values = {**sim.adapter_settings(), "batch_window": 0.2, "poll_interval": 0.05, "backoff": 0.01,
              **settings}
    return CscSigner(CscSigner.Settings(**values), PluginContext("smartca", Path("."), executor))


async def sign_all(signer: CscSigner, role: str, pdfs: list[bytes], records=RECORDS) -> list[bytes]:
    # One sign() call per document, all at once: exactly how the pipeline's sign stage calls it.
    results = await asyncio.gather(*(signer.sign([request_for(r, pdf, role)]) for r, pdf in zip(records, pdfs)))
    return [r[0] for r in results]


async def test_one_approval_covers_a_principals_class_and_only_hashes_leave(keys, service, tmp_path):
    service.approval_delay = 0.2  # the phone answers after a moment: the signer polls
    # A batch goes out when full: the window only bounds a lone document's wait, and on a busy
    # machine preparing six documents can take longer than the other tests' short window.
    signer = make_signer(service, batch_size=len(RECORDS), batch_window=60)
    await signer.open()
    try:
        pdfs = [render_pdf(r) for r in RECORDS]
        pdfs = await sign_all(signer, "homeroom_teacher", pdfs)
        before = service.counters.authorizations
        pdfs = await sign_all(signer, "principal", pdfs)
        # Six transcripts, one principal: one request on the phone, one signHash call.
        assert service.counters.authorizations - before == 1
        assert service.counters.largest_batch == 6
        pdfs = await sign_all(signer, "school_seal", pdfs)
    finally:
        await signer.close()
    # Six teachers (one each) + one principal + one seal.
    assert service.counters.authorizations == 8 and service.counters.signatures == 18
    # What reached the service were hashes: no request body came near a document's size.
    assert service.counters.largest_request < 4096 < min(len(p) for p in pdfs)

    roots = load_certs(keys[1])
    for rec, pdf in zip(RECORDS, pdfs):
        report = await verify_pdf(pdf, roots)
        assert report.ok, report.problems()
        assert [s.signer for s in report.signatures] == [identity_for(rec, r).name for r in SIGNING_ROLES]
        assert all(s.pades_level == "B-B" for s in report.signatures)
    if shutil.which("pdfsig"):
        path = tmp_path / "remote.pdf"
        path.write_bytes(pdfs[0])
        out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout
        assert out.count("Signature Validation: Signature is Valid.") == 3, out


async def test_waiting_for_approval_holds_no_worker(service):
    # While six signers' phones stay silent, the one worker thread is free for other work:
    # waiting is a coroutine asleep between polls, not a thread or process blocked.
    service.approval_delay = 1.0
    with ThreadPoolExecutor(1) as worker:
        signer = make_signer(service, worker)
        await signer.open()
        try:
            pdfs = [render_pdf(r) for r in RECORDS]
            signing = asyncio.ensure_future(sign_all(signer, "homeroom_teacher", pdfs))
            while service.counters.authorizations < len(RECORDS):
                await asyncio.sleep(0.02)
            probe = await asyncio.get_running_loop().run_in_executor(worker, lambda: "worker free")
            assert probe == "worker free" and not signing.done()
            assert len(await signing) == len(RECORDS)
        finally:
            await signer.close()


async def test_batch_size_is_capped_by_the_service(service):
    service.max_batch = 2
    signer = make_signer(service, batch_size=50)
    await signer.open()
    try:
        # Signed as six principals' documents: one identity, more documents than multisign.
        pdfs = [render_pdf(r) for r in RECORDS]
        await sign_all(signer, "homeroom_teacher", pdfs)
        before = service.counters.authorizations
        await sign_all(signer, "principal", pdfs)
    finally:
        await signer.close()
    assert service.counters.authorizations - before == 3 and service.counters.largest_batch == 2


async def test_rejected_and_expired_approvals_fail_with_the_reason(service):
    rec = RECORDS[0]
    teacher = identity_for(rec, "homeroom_teacher")
    signer = make_signer(service)
    await signer.open()
    try:
        service.reject.add(teacher.key)
        with pytest.raises(SigningError, match=r"homeroom_teacher .* rejected the request to sign 1 transcript"):
            await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
        service.reject.clear()
        service.unanswered.add(teacher.key)
        service.approval_lifetime = 0.2
        with pytest.raises(SigningError, match="did not approve .* before it expired"):
            await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
    finally:
        await signer.close()
    assert service.counters.rejected == 1 and service.counters.expired == 1
    assert service.counters.signatures == 0


async def test_an_approval_that_never_comes_times_out(service):
    rec = RECORDS[1]
    service.unanswered.add(identity_for(rec, "homeroom_teacher").key)
    signer = make_signer(service, approval_timeout=0.3)
    await signer.open()
    try:
        with pytest.raises(SigningError, match=r"no approval from homeroom_teacher .* within 0.3 s"):
            await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
    finally:
        await signer.close()


async def test_5xx_429_dropped_connections_and_expired_tokens_are_ridden_out(keys, service):
    rec = RECORDS[2]
    signer = make_signer(service, attempts=6)
    await signer.open()
    try:
        service.faults.fail_next_n = 2
        service.faults.rate_limit_next_n = 1
        service.faults.retry_after_seconds = 0
        service.faults.drop_next_n_connections = 1
        service.expire_tokens()
        [pdf] = await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
    finally:
        await signer.close()
    assert service.counters.faulted == 4 and service.counters.tokens == 2
    assert (await verify_pdf(pdf, load_certs(keys[1]))).ok


async def test_a_service_that_stays_down_fails_with_the_reason(service):
    rec = RECORDS[3]
    signer = make_signer(service, attempts=2)
    await signer.open()
    service.faults.outage = True
    service.faults.retry_after_seconds = 0
    try:
        with pytest.raises(SigningError, match="503"):
            await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
        health = await signer.check()
        assert not health.ok and "503" in health.detail
    finally:
        await signer.close()


async def test_a_signature_that_does_not_verify_is_never_embedded(service):
    rec = RECORDS[4]
    service.faults.bad_signature_next_n = 1
    signer = make_signer(service)
    await signer.open()
    try:
        with pytest.raises(SigningError, match="does not verify against the certificate"):
            await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
        # The next attempt (a replay) gets a good one.
        [pdf] = await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
    finally:
        await signer.close()
    assert pdf.count(b"/ByteRange") == 1


async def test_expired_certificate_is_refused_before_any_approval_is_asked(keys, tmp_path):
    rec = RECORDS[5]
    pki.create_root(tmp_path)
    pki.issue(tmp_path, [identity_for(rec, "homeroom_teacher")], PASSWORD, expired=True)
    sim = CscSimulator(pki_dir=tmp_path, password=PASSWORD)
    await sim.start()
    signer = make_signer(sim)
    await signer.open()
    try:
        with pytest.raises(SigningError, match=r"homeroom_teacher .* expired on .* renew it"):
            await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
        with pytest.raises(SigningError, match="no signing credential for principal"):
            await signer.sign([request_for(rec, render_pdf(rec), "principal")])
    finally:
        await signer.close()
        await sim.stop()
    assert sim.counters.authorizations == 0


async def test_wrong_client_secret_is_a_start_up_error(service):
    signer = make_signer(service, client_secret="not-the-secret-4417")
    with pytest.raises(PluginError) as info:
        await signer.open()
    assert "client_secret" in str(info.value) and "not-the-secret-4417" not in str(info.value)


async def test_remote_signing_config_runs_the_demo(tmp_path, monkeypatch):
    """config/remote-signing.yaml end to end, the way ``hocba-hub demo`` runs it: CSC simulators
    for the remote signers, a loopback TSA for ``timestamp_url: demo``; every PDF carries three
    PAdES B-T signatures that pyHanko and pdfsig accept, one school signs with the other provider."""
    from hub.kit import demo, tsa

    config_file = Path(__file__).resolve().parent.parent / "config" / "remote-signing.yaml"
    monkeypatch.chdir(tmp_path)  # the config's data_dir (hocba-data) is relative
    started: list = []
    real = tsa.start_signing_services

    async def spy(*args, **kwargs):  # the demo's own call, recorded so the test can inspect it
        started.extend(await real(*args, **kwargs))
        return started

    monkeypatch.setattr(tsa, "start_signing_services", spy)
    out = tmp_path / "out"
    assert await demo.run_demo(str(config_file), records=4, out=out, invalid=1) == 0

    providers = {type(s).__name__: s for s in started}
    assert set(providers) >= {"TrustServices", "CscSimulator"}
    csc = [s for s in started if isinstance(s, CscSimulator)]
    assert len(csc) == 2 and all(s.counters.signatures > 0 for s in csc)  # smartca and mysign
    pdfs = sorted(out.glob("*.pdf"))
    assert len(pdfs) == 4
    roots = load_certs(out / "root-ca.pem")
    for path in pdfs:
        report = await verify_pdf(path.read_bytes(), roots)
        assert report.ok, (path.name, report.problems())
        assert [s.pades_level for s in report.signatures] == ["B-T", "B-T", "B-T"]
    if shutil.which("pdfsig"):
        for path in pdfs:
            out_text = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout
            assert out_text.count("Signature Validation: Signature is Valid.") == 3, out_text


async def test_xml_and_pdf_of_a_class_share_one_approval_and_the_xml_verifies(keys, service):
    # The pipeline's sign stage signs a role's XML slots and its PDF field together: the digests
    # of both documents of the whole class go to the service in one batch, one confirmation.
    from hub.documents.binding import verify_file
    from hub.documents.xmldsig import sign_slots
    from hub.plugins import document_formats

    fmt = document_formats()["xml"].cls()
    # A batch goes when it is full (twelve: six XML digests, six PDF hashes) or after the window,
    # so the count below does not depend on how fast the PDFs are prepared.
    signer = make_signer(service, batch_size=12, batch_window=3.0)
    await signer.open()
    try:
        docs = [fmt.build(r) for r in RECORDS]
        pdfs = [render_pdf(r) for r in RECORDS]

        async def role_of(role, docs, pdfs):
            async def one(rec, doc, pdf):
                slots = [s for s in fmt.slots(doc) if s.role == role]
                return await asyncio.gather(sign_slots(doc, slots, signer), signer.sign([request_for(rec, pdf, role)]))
            done = await asyncio.gather(*(one(r, d, p) for r, d, p in zip(RECORDS, docs, pdfs)))
            return [d for d, _ in done], [p[0] for _, p in done]

        docs, pdfs = await role_of("homeroom_teacher", docs, pdfs)
        before = service.counters.authorizations
        docs, pdfs = await role_of("principal", docs, pdfs)
        assert service.counters.authorizations - before == 1
        assert service.counters.largest_batch == 12  # six XML digests and six PDF hashes
        docs, pdfs = await role_of("school_seal", docs, pdfs)
    finally:
        await signer.close()
    roots = [c.dump() for c in load_certs(keys[1])]
    for doc in docs:
        verdict = await verify_file(doc, trust_roots=roots)
        assert verdict.ok, verdict.lines()
