"""The ``pkcs11`` signer on a real PKCS#11 token: SoftHSM2, initialised in a temporary directory.

The school seal's key and certificate go onto the token under a label; the signer finds them
by label with the PIN, and the token makes the signature. Checked by pyHanko and pdfsig.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hub.contracts import PluginContext, PluginError
from hub.documents.render import render_pdf
from hub.documents.signing import SigningError, identity_for, request_for
from hub.documents.verify import load_certs, verify_pdf
from hub.kit import pki
from hub.kit.synthetic import transcript
from hub.kit.tsa import TrustServices
from hub.records import parse_transcript
from signers.pkcs11.signer import Pkcs11Signer
from signers.pkcs11.softhsm import find_library, import_p12, init_token

pytestmark = pytest.mark.skipif(
    shutil.which("softhsm2-util") is None or find_library() is None,
    reason="SoftHSM2 is not installed (Debian package softhsm2; .ci/run installs it)")

PASSWORD = "p11-test-password"
TOKEN = "HOCBA-SEAL"
PIN = "246810"


def record(index: int):
    data = transcript(index)
    data.update(record_id=f"P{index:04d}", event="NEW", version=1, updated_at="2025-06-01T08:00:00")
    return parse_transcript(data)


REC = record(1)
SEAL = identity_for(REC, "school_seal")
PRINCIPAL = identity_for(REC, "principal")


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A SoftHSM2 token with the seal's key (valid) and the principal's (expired certificate)."""
    keys = tmp_path_factory.mktemp("p11-pki")
    root = pki.ensure_pki(keys, [SEAL], PASSWORD)
    pki.issue(keys, [PRINCIPAL], PASSWORD, expired=True)
    conf = init_token(tmp_path_factory.mktemp("softhsm"), TOKEN, pin=PIN, so_pin="13579024")
    # SoftHSM2 reads its configuration when the module is first loaded in this process.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        import_p12(find_library(), TOKEN, PIN, f"seal-{SEAL.key}", keys / f"{SEAL.key}.p12", PASSWORD)
        import_p12(find_library(), TOKEN, PIN, f"old-{PRINCIPAL.key}", keys / f"{PRINCIPAL.key}.p12", PASSWORD)
        yield keys, root


def make_signer(pin: str = PIN, token_label: str = TOKEN, keys: dict[str, str] | None = None) -> Pkcs11Signer:
    settings = Pkcs11Signer.Settings(library=find_library(), token=token_label, pin=pin,
                                     keys=keys or {SEAL.key: f"seal-{SEAL.key}",
                                                   PRINCIPAL.key: f"old-{PRINCIPAL.key}"})
    return Pkcs11Signer(settings, PluginContext("seal-token", Path("."), None))


async def test_wrong_pin_missing_label_or_token_are_clear_start_up_errors(token):
    cases = [
        (make_signer(pin="000000"), r"token 'HOCBA-SEAL' .*: wrong PIN \(settings.pin\)"),
        (make_signer(keys={SEAL.key: "no-such-label"}),
         rf"no private key labelled 'no-such-label' \(settings.keys\['{SEAL.key}'\]\)"),
        (make_signer(token_label="NOT-PLUGGED-IN"), r"token 'NOT-PLUGGED-IN' .* is not present"),
        (Pkcs11Signer(Pkcs11Signer.Settings(library=Path("/nonexistent/libtoken.so"), token=TOKEN, pin=PIN,
                                            keys={SEAL.key: "x"}), PluginContext("t", Path("."))),
         r"module /nonexistent/libtoken.so does not exist \(settings.library\)"),
    ]
    for signer, message in cases:
        with pytest.raises(PluginError, match=message) as info:
            await signer.open()
        assert "000000" not in str(info.value)
        await signer.close()


async def test_the_seal_is_signed_on_the_token_at_b_t(token, tmp_path):
    keys, root = token
    services = TrustServices(keys)
    await services.start()
    signer = make_signer()
    await signer.open()
    try:
        assert (await signer.check()).ok
        pdf = render_pdf(REC, ("school_seal",))
        [signed] = await signer.sign([request_for(REC, pdf, "school_seal", level="B-T",
                                                  timestamp_url=services.tsa_url)])
    finally:
        await signer.close()
        await services.stop()
    report = await verify_pdf(signed, load_certs(root))
    assert report.ok, report.problems()
    [sig] = report.signatures
    assert (sig.field, sig.signer, sig.pades_level) == ("school_seal", SEAL.name, "B-T")
    assert services.counters.timestamps == 1
    if shutil.which("pdfsig"):
        path = tmp_path / "seal.pdf"
        path.write_bytes(signed)
        out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout
        assert "Signature Validation: Signature is Valid." in out, out


async def test_an_expired_certificate_on_the_token_is_refused_and_unknown_identities_named(token):
    signer = make_signer()
    await signer.open()
    try:
        pdf = render_pdf(REC, ("principal",))
        with pytest.raises(SigningError, match=r"principal .* on the token expired on .* renew it"):
            await signer.sign([request_for(REC, pdf, "principal")])
        teacher = identity_for(REC, "homeroom_teacher")
        with pytest.raises(SigningError, match=rf"no key for homeroom_teacher .*{teacher.key}.* settings.keys"):
            await signer.sign([request_for(REC, render_pdf(REC), "homeroom_teacher")])
    finally:
        await signer.close()



@pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 is not installed")
async def test_the_seal_signs_the_xml_on_the_token_and_xmlsec1_accepts_it(token, tmp_path):
    # The XML's issuing signature: only the SignedInfo digest goes to the token (CKM_RSA_PKCS
    # over its DigestInfo); an expired certificate on the token is refused before any digest.
    from hub.documents.xmldsig import DS, sign_slots
    from hub.plugins import document_formats

    _, root = token
    fmt = document_formats()["xml"].cls()
    doc = fmt.build(REC)
    signer = make_signer()
    await signer.open()
    try:
        seal = [s for s in fmt.slots(doc) if s.role == "school_seal"]
        doc = await sign_slots(doc, seal, signer)
        principal = [s for s in fmt.slots(doc) if s.role == "principal"]
        with pytest.raises(SigningError, match="expired"):
            await sign_slots(doc, principal, signer)
    finally:
        await signer.close()
    path = tmp_path / "seal.xml"
    path.write_bytes(doc)
    done = subprocess.run(["xmlsec1", "--verify", "--trusted-pem", str(root), "--id-attr:Id", "DU_LIEU_HOC_BA",
                           "--id-attr:Id", "http://uri.etsi.org/01903/v1.3.2#:SignedProperties",
                           "--id-attr:Id", f"{DS}:KeyInfo", "--id-attr:Id", f"{DS}:Signature",
                           "--node-id", "sig-phathanh", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


async def test_the_department_signs_a_class_package_on_its_token(token):
    # The Department's signature is a signer step like any other: its key on a token, found by
    # the Department's code; only the manifest's digest goes to the token.
    from hub.documents.package import PackageItem, package_class, verify_package
    from hub.documents.verify import trust_roots_der
    from hub.documents.xmldsig import sign_slots
    from hub.kit.synthetic import department_identity
    from hub.plugins import document_formats

    keys, root = token
    department = department_identity(REC.department_code)
    pki.issue(keys, [department], PASSWORD)
    import_p12(find_library(), TOKEN, PIN, f"sogd-{department.key}", keys / f"{department.key}.p12", PASSWORD)
    fmt = document_formats()["xml"].cls()
    signer = make_signer(keys={SEAL.key: f"seal-{SEAL.key}", department.key: f"sogd-{department.key}"})
    await signer.open()
    try:
        doc = fmt.build(REC)
        doc = await sign_slots(doc, [s for s in fmt.slots(doc) if s.role == "school_seal"], signer)
        package = await package_class([PackageItem(REC.record_id, REC.version, doc)], signer,
                                      department_code=department.school_code, department_name=department.name)
    finally:
        await signer.close()
    report = await verify_package(package.to_zip(), trust_roots_der((str(root),)))
    assert report.ok, report.all_problems()
    assert report.department.signer == department.name and report.department.trusted
