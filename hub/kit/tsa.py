"""A test PKI's online services on loopback: timestamping (RFC 3161), OCSP and a CRL.

PAdES B-T needs a timestamping authority and B-LT needs the revocation data a validator would
fetch; a province uses its CA's services, tests and the demo use these. ``TrustServices``
serves, for the PKI in one directory (``hub.kit.pki``):

- ``POST /tsa``: RFC 3161 timestamps signed by ``tsa.pem`` (issued under the root on start);
- ``POST /ocsp`` (and ``GET /ocsp/<base64>``): OCSP answers signed by the root itself;
- ``GET /crl``: the root's CRL (DER).

The answers are certomancer's (``certomancer.services``: ``TimeStamper``,
``SimpleOCSPResponder``, ``CRLBuilder``, by pyHanko's author), driven with the keys
``hub.kit.pki`` issued: certomancer's own PKI is declared in YAML and cannot hold the
per-person keys the demo issues, so only its responders are used, served here over aiohttp.
Certificates point here when issued with ``hub.kit.pki.issue(..., services_url=services.url)``.
``start_signing_services`` starts what ``hocba-hub demo`` needs for a config's signing steps.
Like the rest of the test PKI, nothing here is fit for production.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from aiohttp import web
from asn1crypto import crl as asn1_crl
from asn1crypto import keys, ocsp, tsp
from asn1crypto import x509 as asn1_x509
from certomancer.crypto_utils import load_cert_from_pemder, load_private_key
from certomancer.services import (
    CRLBuilder,
    RevocationInfoInterface,
    SimpleOCSPResponder,
    TimeStamper,
    choose_signed_digest,
)
from cryptography.hazmat.primitives import serialization

from hub.kit import pki
from hub.kit.simulation import LoopbackServer
from hub.plugins import resolve

__all__ = ["DEMO_TSA", "TrustServices", "start_signing_services"]

DEMO_TSA = "demo"
"""The ``timestamp_url`` that asks ``hocba-hub demo`` for its loopback TSA."""

# Answers say they hold from a minute ago: a validator that took "now" just before fetching
# must not see an answer from its future.
_BACKDATE = dt.timedelta(minutes=1)
_VALIDITY = dt.timedelta(days=7)
# The CRL is signed once per revocation state (certomancer parses the root's RSA key again
# for every signature, ≈0.1 s), and again when it is this old.
_CRL_REFRESH = dt.timedelta(hours=1)


@dataclass
class TrustCounters:
    """What the services answered, for tests that need to see them used."""
    timestamps: int = 0
    ocsp: int = 0
    crl: int = 0


class _Revocations(RevocationInfoInterface):
    """certomancer's question to the CA: is this serial revoked? (a snapshot of ``revoke``'s)"""

    def __init__(self, issuer: asn1_x509.Certificate, revoked: dict[int, dt.datetime]):
        self._issuer = issuer
        self._revoked = revoked

    def get_issuer_cert(self) -> asn1_x509.Certificate:
        return self._issuer

    def check_revocation_status(self, cid: ocsp.CertId, at_time: dt.datetime):
        revoked_at = self._revoked.get(cid["serial_number"].native)
        if revoked_at is None:
            return ocsp.CertStatus(name="good", value=None), []
        return ocsp.CertStatus(name="revoked", value=ocsp.RevokedInfo(
            {"revocation_time": revoked_at, "revocation_reason": "key_compromise"})), []


class TrustServices(LoopbackServer):
    """Timestamps, OCSP and a CRL for the test PKI in ``directory``, over HTTP on loopback."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.url: str | None = None
        self.counters = TrustCounters()
        self._revoked: dict[int, dt.datetime] = {}
        self._crl: tuple[dt.datetime, bytes] | None = None

    @property
    def tsa_url(self) -> str:
        """The RFC 3161 endpoint, for ``signing.timestamp_url``."""
        if self.url is None:
            raise RuntimeError("TrustServices.start() must run first")
        return f"{self.url}/tsa"

    def revoke(self, serial_number: int) -> None:
        """Mark a certificate revoked from now on, in OCSP answers and the CRL alike."""
        if serial_number not in self._revoked:
            self._revoked[serial_number] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            self._crl = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve; return the base URL. The TSA certificate is issued anew, pointing here."""
        app = web.Application()
        app.router.add_post("/tsa", self._timestamp)
        app.router.add_post("/ocsp", self._ocsp_post)
        # The base64 of a request may hold "/" (RFC 6960's GET form): the rest of the path is the request.
        app.router.add_get("/ocsp/{request:.+}", self._ocsp_get)
        app.router.add_get("/crl", self._crl_get)
        self.url = await self._serve(app, host, port, shutdown_timeout=0.5)
        await asyncio.to_thread(self._load)
        return self.url

    async def stop(self) -> None:
        await self._shutdown()

    def _load(self) -> None:
        pki.create_root(self.directory)
        # The port changes from run to run; the TSA certificate must name this run's services.
        pki.issue_tsa(self.directory, services_url=self.url, overwrite=True)
        self._root = load_cert_from_pemder(str(self.directory / pki.ROOT_CERT))
        _, root_key = pki.load_root(self.directory)
        self._root_key = keys.PrivateKeyInfo.load(root_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self._root_algorithm = choose_signed_digest("sha256", self._root.public_key)
        tsa_key, _ = load_private_key((self.directory / pki.TSA_KEY).read_bytes(), None)
        self._stamper = TimeStamper(tsa_cert=load_cert_from_pemder(str(self.directory / pki.TSA_CERT)),
                                    tsa_key=tsa_key, certs_to_embed=[self._root])

    # --- RFC 3161 -------------------------------------------------------------------------

    async def _timestamp(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            answer = await asyncio.to_thread(
                lambda: self._stamper.request_tsa_response(tsp.TimeStampReq.load(body)).dump())
        except Exception as exc:  # a malformed request gets an HTTP answer, not a crashed server
            return web.Response(status=400, text=f"bad timestamp request: {exc}")
        self.counters.timestamps += 1
        return web.Response(body=answer, content_type="application/timestamp-reply")

    # --- OCSP -----------------------------------------------------------------------------

    async def _ocsp_post(self, request: web.Request) -> web.Response:
        return await self._ocsp_answer(await request.read())

    async def _ocsp_get(self, request: web.Request) -> web.Response:
        return await self._ocsp_answer(base64.b64decode(unquote(request.match_info["request"])))

    async def _ocsp_answer(self, body: bytes) -> web.Response:
        self.counters.ocsp += 1
        # In a thread: certomancer loads the root's RSA key again for every answer (≈0.1 s of CPU).
        answer = await asyncio.to_thread(self._ocsp_response, body, dict(self._revoked))
        return web.Response(body=answer, content_type="application/ocsp-response")

    def _ocsp_response(self, body: bytes, revoked: dict[int, dt.datetime]) -> bytes:
        # certomancer answers "unauthorized" for another CA's certificates and signs with the
        # root's key, naming the responder by key hash, with the request's nonce echoed.
        responder = SimpleOCSPResponder(
            responder_cert=self._root, responder_key=self._root_key, signature_algo=self._root_algorithm,
            at_time=dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - _BACKDATE,
            revinfo_interface=_Revocations(self._root, revoked), validity=_VALIDITY + _BACKDATE)
        try:
            req = ocsp.OCSPRequest.load(body)
            req.native  # asn1crypto parses lazily: a malformed request must fail here, not mid-answer
        except Exception:
            return SimpleOCSPResponder.build_error_response("malformed_request").dump()
        return responder.build_ocsp_response(req).dump()

    # --- CRL ------------------------------------------------------------------------------

    async def _crl_get(self, request: web.Request) -> web.Response:
        self.counters.crl += 1
        now = dt.datetime.now(dt.timezone.utc)
        if self._crl is None or now - self._crl[0] > _CRL_REFRESH:
            self._crl = (now, await asyncio.to_thread(self._build_crl, now, dict(self._revoked)))
        return web.Response(body=self._crl[1], content_type="application/pkix-crl")

    def _build_crl(self, now: dt.datetime, revoked: dict[int, dt.datetime]) -> bytes:
        builder = CRLBuilder(issuer_name=self._root.subject, issuer_key=self._root_key,
                             signature_algo=self._root_algorithm,
                             authority_key_identifier=self._root.key_identifier_value)
        entries = [CRLBuilder.format_revoked_cert(serial, asn1_crl.CRLReason("key_compromise"), at)
                   for serial, at in revoked.items()]
        now = now.replace(microsecond=0)
        crl = builder.build_crl(crl_number=int(now.timestamp()), this_update=now - _BACKDATE,
                                next_update=now + _VALIDITY, revoked_certs=entries)
        return crl.dump()


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
        simulator = resolve(ref)(pki_dir=pki_dir, password=password)
        await simulator.start()
        started.append(simulator)
        config.override_settings(section.name, simulator.adapter_settings())
    return started
