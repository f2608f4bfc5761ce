"""PAdES levels (B-B, B-T, B-LT) with a timestamping authority, OCSP and a CRL on loopback,
per-step and per-school signing config, and what the pipeline does with documents that arrive
already signed or fail validation.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import changed_page, deliver_to, hub_config, pull_from, worked_through
from cryptography.hazmat.primitives.serialization import pkcs12

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub import store as st
from hub.config import ConfigError, parse_config
from hub.contracts import SIGNING_ROLES, PluginContext, RawRecord
from hub.documents.render import render_pdf
from hub.documents.signing import SigningError, identity_for, request_for
from hub.documents.verify import load_certs, verify_pdf
from hub.kit import pki
from hub.kit.synthetic import transcript
from hub.kit.tsa import TrustServices
from hub.records import parse_transcript
from signers.pkcs12.signer import Pkcs12Signer

PASSWORD = "levels-test-password"


def record(index: int, **envelope):
    data = transcript(index)
    data.update({"record_id": f"L{index:04d}", "event": "NEW", "version": 1,
                 "updated_at": "2025-06-01T08:00:00", **envelope})
    return parse_transcript(data)


REC = record(2)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trust(tmp_path_factory):
    """A PKI whose certificates name OCSP and CRL services that really answer, and a TSA."""
    directory = tmp_path_factory.mktemp("levels-pki")
    services = TrustServices(directory)
    await services.start()
    pki.issue(directory, [identity_for(REC, role) for role in SIGNING_ROLES], PASSWORD,
              services_url=services.url)
    yield directory, services
    await services.stop()


def local(directory: Path) -> Pkcs12Signer:
    return Pkcs12Signer(Pkcs12Signer.Settings(directory=directory, password=PASSWORD),
                        PluginContext("keys", directory))


@pytest.mark.asyncio(loop_scope="module")
async def test_b_t_and_b_lt_validate_and_b_lt_stands_offline(trust, tmp_path):
    directory, services = trust
    signer = local(directory)
    await signer.open()
    pdf = render_pdf(REC)
    for role, level in zip(SIGNING_ROLES, ("B-T", "B-LT", "B-LT")):
        [pdf] = await signer.sign([request_for(REC, pdf, role, level=level, timestamp_url=services.tsa_url)])
    roots = load_certs(directory / pki.ROOT_CERT)
    report = await verify_pdf(pdf, roots)
    assert report.ok, report.problems()
    assert [s.pades_level for s in report.signatures] == ["B-T", "B-LT", "B-LT"]
    assert all(s.timestamp_ok for s in report.signatures)
    # The signing time a validator reports is the TSA's, not the signer's own claim.
    assert all(s.signing_time is not None for s in report.signatures)
    assert services.counters.timestamps == 3 and services.counters.ocsp >= 2
    if shutil.which("pdfsig"):
        path = tmp_path / "levels.pdf"
        path.write_bytes(pdf)
        out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout
        assert out.count("Signature Validation: Signature is Valid.") == 3, out
    # The validator fetches nothing (verify_pdf never does): B-LT holds on the DSS alone.
    before = services.counters.ocsp + services.counters.crl
    again = await verify_pdf(pdf, roots)
    assert [s.pades_level for s in again.signatures] == ["B-T", "B-LT", "B-LT"]
    assert services.counters.ocsp + services.counters.crl == before
    # The B-LT question skips pyHanko's difference analysis (the first validation made it): a
    # page changed after the signatures still shows against each of them.
    changed = await verify_pdf(changed_page(pdf), roots)
    assert not changed.ok and all(s.modified and not s.ok for s in changed.signatures)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_revoked_certificate_gets_no_b_lt_signature(trust, tmp_path):
    directory, services = trust
    pki.issue(tmp_path, [identity_for(REC, "homeroom_teacher")], PASSWORD, services_url=services.url)
    shutil.copy(directory / pki.ROOT_CERT, tmp_path / pki.ROOT_CERT)
    shutil.copy(directory / "root-ca.key", tmp_path / "root-ca.key")
    teacher = identity_for(REC, "homeroom_teacher")
    _key, cert, _chain = pkcs12.load_key_and_certificates(
        (tmp_path / f"{teacher.key}.p12").read_bytes(), PASSWORD.encode())
    services.revoke(cert.serial_number)
    signer = local(tmp_path)
    await signer.open()
    with pytest.raises(SigningError, match=r"B-LT: cannot collect revocation data .*homeroom_teacher"):
        await signer.sign([request_for(REC, render_pdf(REC), "homeroom_teacher", level="B-LT",
                                       timestamp_url=services.tsa_url)])


@pytest.mark.asyncio(loop_scope="module")
async def test_an_unreachable_tsa_fails_b_t_naming_the_tsa(trust):
    directory, _services = trust
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/tsa"
    signer = local(directory)
    await signer.open()
    with pytest.raises(SigningError, match=rf"timestamp from {dead} for homeroom_teacher .* failed"):
        await signer.sign([request_for(REC, render_pdf(REC), "homeroom_teacher", level="B-T", timestamp_url=dead)])


def base_config(**signing):
    return {
        "adapters": [{"name": "a", "type": "vnpt", "settings": {"base_url": "http://127.0.0.1:1",
                                                                 "client_id": "x", "client_secret": "y"}}],
        "destination": {"name": "ttdlqg", "type": "ttdlqg", "settings": {"base_url": "http://127.0.0.1:1",
                                                                       "token": "t"}},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": ".", "password": "p"}},
                    {"name": "other", "type": "pkcs12", "settings": {"directory": ".", "password": "p"}}],
        "signing": signing,
    }


def test_levels_and_signers_per_step_with_school_overrides():
    config = parse_config(base_config(
        level="B-T", timestamp_url="http://tsa.example.vn/tsr",
        steps=[{"role": "homeroom_teacher", "signer": "keys", "level": "B-B"},
               {"role": "principal", "signer": "keys"},
               {"role": "school_seal", "signer": "keys", "level": "B-LT"}],
        schools={"01002003": {"principal": {"signer": "other", "timestamp_url": "http://tsa2.example.vn"},
                              "homeroom_teacher": {"level": "B-T"}}}))
    signing = config.signing
    default = [signing.step_for(r, "01001001") for r in SIGNING_ROLES]
    assert [(s.signer, s.level, s.timestamp_url) for s in default] == [
        ("keys", "B-B", ""), ("keys", "B-T", "http://tsa.example.vn/tsr"),
        ("keys", "B-LT", "http://tsa.example.vn/tsr")]
    school = [signing.step_for(r, "01002003") for r in SIGNING_ROLES]
    assert [(s.signer, s.level, s.timestamp_url) for s in school] == [
        ("keys", "B-T", "http://tsa.example.vn/tsr"), ("other", "B-T", "http://tsa2.example.vn"),
        ("keys", "B-LT", "http://tsa.example.vn/tsr")]
    assert signing.signer_names() == {"keys", "other"}

    with pytest.raises(ConfigError) as info:
        parse_config(base_config(steps=[{"role": "homeroom_teacher", "signer": "keys", "level": "B-T"}]))
    assert "signing: steps[homeroom_teacher]: level B-T needs a timestamp_url" in info.value.errors[0]
    with pytest.raises(ConfigError) as info:
        parse_config(base_config(steps=[{"role": "homeroom_teacher", "signer": "keys"}],
                                 schools={"01001001": {"principal": {"signer": "other"}}}))
    assert "schools.01001001: principal is not a signing step" in info.value.errors[0]


# --- the pipeline ----------------------------------------------------------------------------

async def run_rendered(tmp_path: Path, directory: Path, makers: list) -> dict[str, st.Row]:
    """Put documents into the store as rendered (as if they arrived so), run the hub on them.

    Each maker gets the record's envelope from the store and returns ``(record, pdf)``; the
    result maps each maker's index (``src-<i>``) to its row after the run.
    """
    vendor, central = VnptSimulator(records=0), TtdlqgSimulator()
    await vendor.start()
    await central.start()
    config = hub_config(tmp_path / "data", directory, adapters=[pull_from(vendor)], destination=deliver_to(central),
                        attempts=2, roles=SIGNING_ROLES, password=PASSWORD, trust=[directory / pki.ROOT_CERT])
    store = st.Store(config.store_path)
    for i, make in enumerate(makers):
        [pk] = store.receive("school-a", [RawRecord(f"src-{i}", json.dumps({"i": i}).encode())])
        row = store.get(pk)
        rec, pdf = await make(dict(record_id=row.record_id, version=row.version, event=row.event,
                                   updated_at=row.received_at[:19]))
        store.advance(pk, lc.RECEIVED, lc.NORMALIZED, school_code=rec.school_code,
                      normalized=rec.model_dump(mode="json"))
        store.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=pdf)
    store.close()
    try:
        return await worked_through(config)
    finally:
        await vendor.stop()
        await central.stop()


async def test_signed_on_arrival_is_validated_and_only_missing_steps_are_signed(tmp_path):
    directory = tmp_path / "pki"
    indices = (10, 11, 12)
    pki.ensure_pki(directory, [identity_for(record(i), role) for i in indices for role in SIGNING_ROLES],
                   PASSWORD)
    outsider = tmp_path / "vendor-pki"
    pki.create_root(outsider, name="Some Vendor's Own Root")
    pki.issue(outsider, [identity_for(record(12), "homeroom_teacher")], PASSWORD)
    kept: dict[int, bytes] = {}

    def teacher_signed(index: int, keys: Path, tamper: bool = False):
        async def make(envelope):
            rec = record(index, **envelope)
            signer = local(keys)
            await signer.open()
            [pdf] = await signer.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
            kept[index] = pdf
            if tamper:  # one byte of the attached record, which the signature covers
                at = pdf.index(b"stream", pdf.index(b"/EmbeddedFile")) + 20
                pdf = pdf[:at] + bytes([pdf[at] ^ 0x01]) + pdf[at + 1:]
            return rec, pdf
        return make

    rows = await run_rendered(tmp_path, directory, [
        teacher_signed(10, directory), teacher_signed(11, directory, tamper=True),
        teacher_signed(12, outsider)])
    delivered, modified, stranger = rows["src-0"], rows["src-1"], rows["src-2"]

    assert delivered.state == lc.DELIVERED, delivered.errors
    # The teacher's signature that came with the document is kept byte for byte, not redone.
    assert delivered.pdf.startswith(kept[10])
    report = await verify_pdf(delivered.pdf, load_certs(directory / pki.ROOT_CERT))
    assert report.ok and report.fields == list(SIGNING_ROLES)

    assert modified.state == lc.QUARANTINED
    assert any("homeroom_teacher: the document was modified after it was signed" in e for e in modified.errors)
    assert stranger.state == lc.QUARANTINED
    assert any("does not chain to a trusted root" in e for e in stranger.errors), stranger.errors
