"""A test PKI's online services on loopback: timestamping (RFC 3161), OCSP and a CRL.

PAdES B-T needs a timestamping authority and B-LT needs the revocation data a validator would
fetch; a province uses its CA's services, tests and the demo use these. ``TrustServices``
serves, for the PKI in one directory (``hub.kit.pki``):

- ``POST /tsa``: RFC 3161 timestamps signed by ``tsa.pem`` (issued under the root on start);
- ``POST /ocsp`` (and ``GET /ocsp/<base64>``): OCSP answers signed by the root itself;
- ``GET /crl``: the root's CRL (DER).

Certificates point here when issued with ``hub.kit.pki.issue(..., services_url=services.url)``.
``start_signing_services`` starts what ``hocba-hub demo`` needs for a config's signing steps.
Like the rest of the test PKI, nothing here is fit for production.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from asn1crypto import cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.x509 import ocsp
from pyhanko.sign import general
from pyhanko.sign.general import simple_cms_attribute
from pyhanko.sign.timestamps import DummyTimeStamper
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

from hub.kit import pki

__all__ = ["DEMO_TSA", "TrustServices", "start_signing_services"]

DEMO_TSA = "demo"
"""The ``timestamp_url`` that asks ``hocba-hub demo`` for its loopback TSA."""


class _KeptKeyTimeStamper(DummyTimeStamper):
    """pyHanko's test TSA, holding its key loaded: the stock one parses it on every request."""

    def __init__(self, cert: x509.Certificate, key: Any, chain: list[x509.Certificate]):
        def der(c: x509.Certificate) -> asn1_x509.Certificate:
            return asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))

        super().__init__(tsa_cert=der(cert), tsa_key=None, certs_to_embed=[der(c) for c in chain])  # type: ignore[arg-type]
        self._key = key

    def _sign_tst_info(self, tst_info_data: bytes, md_algorithm: str, at: dt.datetime):
        digest = hashes.Hash(get_pyca_cryptography_hash(md_algorithm))
        digest.update(tst_info_data)
        signed_attrs = cms.CMSAttributes([
            simple_cms_attribute("content_type", "tst_info"),
            simple_cms_attribute("signing_time", cms.Time({"utc_time": core.UTCTime(at)})),
            simple_cms_attribute("signing_certificate", general.as_signing_certificate(self.tsa_cert)),
            simple_cms_attribute("message_digest", digest.finalize()),
        ])
        signature = self._key.sign(signed_attrs.dump(), PKCS1v15(),
                                   get_pyca_cryptography_hash(md_algorithm.upper()))
        return signature, signed_attrs


@dataclass
class TrustCounters:
    """What the services answered, for tests that need to see them used."""
    timestamps: int = 0
    ocsp: int = 0
    crl: int = 0


class TrustServices:
    """Timestamps, OCSP and a CRL for the test PKI in ``directory``, over HTTP on loopback."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.url: str | None = None
        self.counters = TrustCounters()
        self._revoked: dict[int, dt.datetime] = {}
        self._runner: web.AppRunner | None = None

    @property
    def tsa_url(self) -> str:
        """The RFC 3161 endpoint, for ``signing.timestamp_url``."""
        if self.url is None:
            raise RuntimeError("TrustServices.start() must run first")
        return f"{self.url}/tsa"

    def revoke(self, serial_number: int) -> None:
        """Mark a certificate revoked from now on, in OCSP answers and the CRL alike."""
        self._revoked.setdefault(serial_number, dt.datetime.now(dt.timezone.utc))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve; return the base URL. The TSA certificate is issued anew, pointing here."""
        app = web.Application()
        app.router.add_post("/tsa", self._timestamp)
        app.router.add_post("/ocsp", self._ocsp_post)
        app.router.add_get("/ocsp/{request}", self._ocsp_get)
        app.router.add_get("/crl", self._crl)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        await asyncio.to_thread(self._load)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _load(self) -> None:
        pki.create_root(self.directory)
        # The port changes from run to run; the TSA certificate must name this run's services.
        pki.issue_tsa(self.directory, services_url=self.url, overwrite=True)
        self._root, self._root_key = pki.load_root(self.directory)
        tsa_cert = x509.load_pem_x509_certificate((self.directory / pki.TSA_CERT).read_bytes())
        tsa_key = serialization.load_pem_private_key((self.directory / pki.TSA_KEY).read_bytes(), None)
        self._stamper = _KeptKeyTimeStamper(tsa_cert, tsa_key, [self._root])
        root_der = self._root.public_bytes(serialization.Encoding.DER)
        spki = asn1_x509.Certificate.load(root_der).public_key
        self._key_hashes = {name: _digest(name, spki["public_key"].contents[1:])
                            for name in ("sha1", "sha256")}
        self._name_hashes = {name: _digest(name, asn1_x509.Certificate.load(root_der).subject.dump())
                             for name in ("sha1", "sha256")}

    # --- RFC 3161 -------------------------------------------------------------------------

    async def _timestamp(self, request: web.Request) -> web.Response:
        try:
            tsa_request = tsp.TimeStampReq.load(await request.read())
            answer = self._stamper.request_tsa_response(tsa_request)
        except Exception as exc:  # a malformed request gets an HTTP answer, not a crashed server
            return web.Response(status=400, text=f"bad timestamp request: {exc}")
        self.counters.timestamps += 1
        return web.Response(body=answer.dump(), content_type="application/timestamp-reply")

    # --- OCSP -----------------------------------------------------------------------------

    async def _ocsp_post(self, request: web.Request) -> web.Response:
        return self._ocsp_answer(await request.read())

    async def _ocsp_get(self, request: web.Request) -> web.Response:
        return self._ocsp_answer(base64.b64decode(request.match_info["request"]))

    def _ocsp_answer(self, body: bytes) -> web.Response:
        self.counters.ocsp += 1
        try:
            req = ocsp.load_der_ocsp_request(body)
        except ValueError:
            answer = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
            return web.Response(body=answer.public_bytes(serialization.Encoding.DER),
                                content_type="application/ocsp-response")
        algorithm = req.hash_algorithm
        name = algorithm.name
        if (self._name_hashes.get(name) != req.issuer_name_hash
                or self._key_hashes.get(name) != req.issuer_key_hash):
            answer = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
            return web.Response(body=answer.public_bytes(serialization.Encoding.DER),
                                content_type="application/ocsp-response")
        now = dt.datetime.now(dt.timezone.utc)
        revoked_at = self._revoked.get(req.serial_number)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=req.issuer_name_hash, issuer_key_hash=req.issuer_key_hash,
            serial_number=req.serial_number, algorithm=algorithm,
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked_at else ocsp.OCSPCertStatus.GOOD,
            this_update=now - dt.timedelta(minutes=1), next_update=now + dt.timedelta(days=7),
            revocation_time=revoked_at,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked_at else None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self._root)
        for extension in req.extensions:
            if isinstance(extension.value, x509.OCSPNonce):
                builder = builder.add_extension(extension.value, critical=False)
        answer = builder.sign(self._root_key, hashes.SHA256())
        return web.Response(body=answer.public_bytes(serialization.Encoding.DER),
                            content_type="application/ocsp-response")

    # --- CRL ------------------------------------------------------------------------------

    async def _crl(self, request: web.Request) -> web.Response:
        self.counters.crl += 1
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self._root.subject)
                   .last_update(now - dt.timedelta(minutes=1))
                   .next_update(now + dt.timedelta(days=7))
                   .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._root_key.public_key()), critical=False))
        for serial, at in self._revoked.items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build())
        crl = builder.sign(self._root_key, hashes.SHA256())
        return web.Response(body=crl.public_bytes(serialization.Encoding.DER), content_type="application/pkix-crl")


def _digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA1() if name == "sha1" else hashes.SHA256())  # noqa: S303 - OCSP CertID
    h.update(data)
    return h.finalize()


# --- what the demo starts --------------------------------------------------------------------

class _Stoppable(Protocol):
    async def stop(self) -> None: ...


async def start_signing_services(config: Any, pki_dir: Path, password: str) -> list[_Stoppable]:
    """Start what a config's signing needs on loopback, for ``hocba-hub demo``; point it there.

    - a ``TrustServices`` TSA when any step (or school override) says ``timestamp_url: demo``;
    - for each configured signer whose class names a ``simulator`` (``"pkg.module:Class"``,
      as adapters do), that simulator with per-user keys from the demo PKI in ``pki_dir``, and
      the signer's settings re-validated with the simulator's ``adapter_settings()``.

    Returns what was started; the caller stops each (``await s.stop()``) when done.
    """
    from hub.plugins import signer_types

    started: list[_Stoppable] = []
    signing = config.signing
    wants_tsa = signing.timestamp_url == DEMO_TSA or any(
        s.timestamp_url == DEMO_TSA for s in signing.steps) or any(
        o.timestamp_url == DEMO_TSA for overrides in signing.schools.values() for o in overrides.values())
    if wants_tsa:
        services = TrustServices(pki_dir)
        await services.start()
        started.append(services)
        url = services.tsa_url
        if signing.timestamp_url == DEMO_TSA:
            signing.timestamp_url = url
        for step in signing.steps:
            if step.timestamp_url == DEMO_TSA:
                step.timestamp_url = url
        for overrides in signing.schools.values():
            for override in overrides.values():
                if override.timestamp_url == DEMO_TSA:
                    override.timestamp_url = url
    registry = signer_types()
    for section in config.signers:
        cls = registry[section.type].cls
        ref = getattr(cls, "simulator", None)
        if not ref:
            continue
        module, _, name = ref.partition(":")
        simulator = getattr(importlib.import_module(module), name)(pki_dir=pki_dir, password=password)
        await simulator.start()
        started.append(simulator)
        config.override_settings(section.name, simulator.adapter_settings())
    return started
