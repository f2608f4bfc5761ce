"""The test PKI's loopback trust services (``hub.kit.tsa.TrustServices``, certomancer's
responders with the keys ``hub.kit.pki`` issued), asked over HTTP the way a validator asks:
OCSP says good, revoked, unauthorized and malformed where it should; the CRL is the root's,
lists what was revoked and follows a later revocation; timestamps are the TSA's."""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import quote

import aiohttp
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import ocsp

from hub.contracts import SigningIdentity
from hub.kit import pki
from hub.kit.tsa import TrustServices

PASSWORD = "trust-services-test"


def _identity(key: str) -> SigningIdentity:
    return SigningIdentity(role="principal", name=f"Người ký {key}", school_code="01001001", personal_id=key)


def _cert(directory, key: str) -> x509.Certificate:
    _, cert, _ = pkcs12.load_key_and_certificates((directory / f"{key}.p12").read_bytes(), PASSWORD.encode())
    return cert


async def _ocsp(session, url: str, cert: x509.Certificate, issuer: x509.Certificate, *, get: bool = False,
                nonce: bytes | None = None) -> ocsp.OCSPResponse:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - OCSP CertID
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    body = builder.build().public_bytes(serialization.Encoding.DER)
    if get:
        # RFC 6960 A.1: the request's base64, URL-encoded ("/" and "+" included).
        request = session.get(f"{url}/ocsp/{quote(base64.b64encode(body).decode(), safe='')}")
    else:
        request = session.post(f"{url}/ocsp", data=body, headers={"Content-Type": "application/ocsp-request"})
    async with request as response:
        assert response.status == 200 and response.content_type == "application/ocsp-response"
        return ocsp.load_der_ocsp_response(await response.read())


async def test_ocsp_and_the_crl_follow_revocations(tmp_path):
    services = TrustServices(tmp_path)
    url = await services.start()
    try:
        pki.issue(tmp_path, [_identity("001111111111"), _identity("002222222222")], PASSWORD, services_url=url)
        good, bad = _cert(tmp_path, "001111111111"), _cert(tmp_path, "002222222222")
        root, root_key = pki.load_root(tmp_path)
        async with aiohttp.ClientSession() as session:
            nonce = os.urandom(16)
            answer = await _ocsp(session, url, good, root, nonce=nonce)
            assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD and answer.serial_number == good.serial_number
            # Signed by the root itself, over the request's nonce.
            root.public_key().verify(answer.signature, answer.tbs_response_bytes, padding.PKCS1v15(),
                                     answer.signature_hash_algorithm)
            assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce

            services.revoke(bad.serial_number)
            answer = await _ocsp(session, url, bad, root, get=True)
            assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
            assert answer.revocation_reason == x509.ReasonFlags.key_compromise
            assert (await _ocsp(session, url, good, root)).certificate_status == ocsp.OCSPCertStatus.GOOD

            # Another CA's certificate: this responder may not speak for it.
            other = tmp_path / "other"
            pki.create_root(other, "Another Root")
            pki.issue(other, [_identity("003333333333")], PASSWORD)
            foreign = await _ocsp(session, url, _cert(other, "003333333333"), pki.load_root(other)[0])
            assert foreign.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
            async with session.post(f"{url}/ocsp", data=b"not an OCSP request") as response:
                malformed = ocsp.load_der_ocsp_response(await response.read())
            assert malformed.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST

            async def crl() -> x509.CertificateRevocationList:
                async with session.get(f"{url}/crl") as response:
                    assert response.status == 200 and response.content_type == "application/pkix-crl"
                    return x509.load_der_x509_crl(await response.read())

            first = await crl()
            assert first.issuer == root.subject and first.is_signature_valid(root_key.public_key())
            assert first.get_revoked_certificate_by_serial_number(bad.serial_number) is not None
            assert first.get_revoked_certificate_by_serial_number(good.serial_number) is None
            assert (await crl()).public_bytes(serialization.Encoding.DER) == first.public_bytes(
                serialization.Encoding.DER)  # unchanged revocations: the same CRL, not signed again
            services.revoke(good.serial_number)
            second = await crl()
            assert second.get_revoked_certificate_by_serial_number(good.serial_number) is not None
            assert second.is_signature_valid(root_key.public_key())
        assert services.counters.ocsp == 5 and services.counters.crl == 3
    finally:
        await services.stop()


async def test_timestamps_are_the_tsas_and_a_bad_request_is_refused(tmp_path):
    services = TrustServices(tmp_path)
    await services.start()
    try:
        digest = hashlib.sha256(b"hoc ba").digest()
        request = tsp.TimeStampReq({
            "version": "v1", "nonce": 4417, "cert_req": True,
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": digest}})
        async with aiohttp.ClientSession() as session:
            async with session.post(services.tsa_url, data=request.dump(),
                                    headers={"Content-Type": "application/timestamp-query"}) as response:
                assert response.status == 200 and response.content_type == "application/timestamp-reply"
                answer = tsp.TimeStampResp.load(await response.read())
            async with session.post(services.tsa_url, data=b"not a timestamp request") as response:
                assert response.status == 400 and "bad timestamp request" in await response.text()
        assert answer["status"]["status"].native == "granted"
        signed = answer["time_stamp_token"]["content"]
        info = signed["encap_content_info"]["content"].parsed
        assert info["message_imprint"]["hashed_message"].native == digest and info["nonce"].native == 4417
        tsa = x509.load_pem_x509_certificate((tmp_path / pki.TSA_CERT).read_bytes())
        [signer] = signed["signer_infos"]
        assert signer["sid"].chosen["serial_number"].native == tsa.serial_number
        assert services.counters.timestamps == 1
    finally:
        await services.stop()
