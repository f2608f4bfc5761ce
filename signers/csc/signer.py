"""Remote signing over the Cloud Signature Consortium API (VNPT SmartCA, Viettel MySign shape).

Built on pyHanko's CSC client (``pyhanko.sign.signers.csc_signer``): its ``CSCSigner`` formats
``signatures/signHash`` and its ``CSCAuthorizationManager`` ``credentials/authorize``; this
module adds what a province needs around them (see ``CONTRACT.md``):

- the signer found by personal id (``credentials/list``), its certificate read once and
  refused when expired or not yet valid;
- **batching**: concurrent signing requests for one signer are collected for up to
  ``batch_window`` seconds or ``batch_size`` documents, and one approval covers them all;
- **approval on the phone**: the service answers "pending" and the signer polls, a coroutine
  asleep between polls — no worker process or thread waits;
- an OAuth2 client-credentials token, refreshed on 401, and retries with backoff on 5xx/429
  and dropped connections (an aiohttp client middleware, so pyHanko's own calls get them too);
- every returned signature checked against the certificate before it enters a document.

Only hashes leave the hub: the document is prepared in a worker process
(``hub.signing.sign_elsewhere``) and the service sees the hash of the signed attributes::

    signers:
      - name: smartca
        type: csc
        settings:
          base_url: https://smartca.example.vn
          client_id: ${SMARTCA_CLIENT_ID}
          client_secret: ${SMARTCA_CLIENT_SECRET}
          batch_size: 50          # one approval for up to 50 transcripts
          batch_window: 2.0       # seconds to gather them
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from pydantic import Field, SecretStr
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers.csc_signer import (
    CSCAuthorizationInfo,
    CSCAuthorizationManager,
    CSCCredentialInfo,
    CSCServiceSessionInfo,
    CSCSigner,
    base64_digest,
    fetch_certs_in_csc_credential,
)
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.sig_validate import (
    DEFAULT_SIGNATURE_VALIDATOR,
    SignatureValidationContext,
)
from hub import (
    ROLE_LABELS,
    DigestSignRequest,
    Health,
    PluginContext,
    PluginError,
    PluginSettings,
    Signer,
    SigningError,
    SigningIdentity,
    SignRequest,
    Transient,
    parse_retry_after,
    refuse_outside_validity,
    reserve_bytes,
    retrying,
    sign_elsewhere,
    verify_digest,
)

_RETRY_STATUSES = {429, 500, 502, 503, 504}


class CscSigner(Signer):
    """Remote signing service speaking the CSC API: SmartCA, MySign and the like."""

    name = "csc"
    simulator = "signers.csc.simulator:CscSimulator"

    class Settings(PluginSettings):
        base_url: str = Field(pattern=r"^https?://\S+$",
                              description="The service's base URL (before /csc/v1/…)")
        client_id: str = Field(description="OAuth2 client id the province was given")
        client_secret: SecretStr = Field(description="OAuth2 client secret; use ${ENV_VAR}")
        token_url: str = Field(default="", pattern=r"^(|https?://\S+)$",
                               description="OAuth2 token endpoint; empty = <base_url>/oauth2/token")
        api_version: str = Field(default="v1", pattern=r"^v\d+$")
        batch_size: int = Field(default=50, ge=1, le=1000,
                                description="Documents one approval covers at most (the service's "
                                            "multisign caps it too)")
        batch_window: float = Field(default=1.0, ge=0,
                                    description="Seconds to gather one signer's documents before "
                                                "asking for approval")
        approval_timeout: float = Field(default=600.0, gt=0,
                                        description="Seconds to wait for the signer to approve")
        poll_interval: float = Field(default=2.0, gt=0,
                                     description="Seconds between approval polls, unless the "
                                                 "service says otherwise")
        request_timeout: float = Field(default=30.0, gt=0, description="Seconds per HTTP request")
        attempts: int = Field(default=4, ge=1,
                              description="Tries per call on 5xx, 429 or a dropped connection")
        backoff: float = Field(default=0.5, gt=0, description="Seconds before the first retry")
        credential_ttl: float = Field(default=3600.0, gt=0,
                                      description="Seconds before a signer's certificate is read again")

    def __init__(self, settings: Settings, context: PluginContext):
        super().__init__(settings, context)
        self.settings: CscSigner.Settings = settings
        self.client = _Client(settings)
        self._credentials: dict[str, _Credential] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        """Log in now, so a wrong client id or secret stops start-up with its reason."""
        await self.client.open()
        try:
            await self.client.token()
        except PluginError:
            await self.client.close()
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError):
            # Down right now is not a configuration error: records wait and retry, and
            # /readyz says the service is unreachable.
            pass

    async def close(self) -> None:
        for credential in self._credentials.values():
            credential.signer.abandon()  # approvals still awaited: nobody is left to use them
        await self.client.close()

    async def check(self) -> Health:
        try:
            info = await self.client.call("info", {}, auth=False)
        except Exception as exc:  # whatever went wrong is the health answer
            return Health(False, f"{self.settings.base_url}: {exc}")
        return Health(True, f"{info.get('name', 'CSC service')}, {len(self._credentials)} signers known")

    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Sign each request; concurrent calls for one signer share one approval."""
        now = dt.datetime.now(dt.timezone.utc)
        credentials = {}
        for identity in dict.fromkeys(r.identity for r in requests):
            try:
                credentials[identity] = await self._credential(identity, now)
            except (_ServiceError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise SigningError(f"{self.name}: cannot look up {identity.role} {identity.name} at "
                                   f"{self.settings.base_url}: {type(exc).__name__}: {exc}") from exc
        jobs = []
        for r in requests:
            credential = credentials[r.identity]
            credential.refuse_if_invalid(r.identity, now)
            reserved = credential.bytes_reserved_timestamped if r.level != "B-B" else credential.bytes_reserved
            jobs.append(sign_elsewhere(r, credential.signer, executor=self.context.executor,
                                       bytes_reserved=reserved))
        return list(await asyncio.gather(*jobs))

    async def _credentials_for(self, identities, now: dt.datetime) -> dict:
        out = {}
        for identity in dict.fromkeys(identities):
            try:
                out[identity] = await self._credential(identity, now)
            except (_ServiceError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise SigningError(f"{self.name}: cannot look up {identity.role} {identity.name} at "
                                   f"{self.settings.base_url}: {type(exc).__name__}: {exc}") from exc
            out[identity].refuse_if_invalid(identity, now)
        return out

    async def certificates(self, identity: SigningIdentity) -> tuple[bytes, ...]:
        """The signer's certificate and chain as the service lists them (refused when not valid now)."""
        credential = (await self._credentials_for([identity], dt.datetime.now(dt.timezone.utc)))[identity]
        signer = credential.signer
        return (signer.signing_cert.dump(), *(c.dump() for c in signer.cert_registry))

    async def sign_digests(self, requests: Sequence[DigestSignRequest]) -> list[bytes]:
        """Only the digests go to the service, into the same batches (and approvals) as PDF hashes
        for the same signer, so a class's XML and PDF signatures share one confirmation."""
        credentials = await self._credentials_for([r.identity for r in requests], dt.datetime.now(dt.timezone.utc))
        return list(await asyncio.gather(*(credentials[r.identity].signer.async_sign_digest(
            r.digest, r.digest_algorithm) for r in requests)))

    async def _credential(self, identity: SigningIdentity, now: dt.datetime) -> "_Credential":
        cached = self._credentials.get(identity.key)
        if cached is not None and cached.fresh(now, self.settings.credential_ttl):
            return cached
        lock = self._locks.setdefault(identity.key, asyncio.Lock())
        async with lock:  # one lookup per signer, however many documents wait for it
            cached = self._credentials.get(identity.key)
            if cached is not None and cached.fresh(now, self.settings.credential_ttl):
                return cached
            credential = await self._look_up(identity, now)
            self._credentials[identity.key] = credential
            return credential

    async def _look_up(self, identity: SigningIdentity, now: dt.datetime) -> "_Credential":
        who = f"{identity.role} {identity.name} (personal id {identity.key})"
        listed = await self.client.call("credentials/list", {"userID": identity.key, "maxResults": 10})
        ids = listed.get("credentialIDs") or []
        if not ids:
            raise SigningError(f"{self.name}: the service has no signing credential for {who}")
        found: list[_Credential] = []
        for credential_id in ids:
            session_info = CSCServiceSessionInfo(self.settings.base_url.rstrip("/"), credential_id,
                                                 api_ver=self.settings.api_version)
            try:
                info = await fetch_certs_in_csc_credential(self.client.session, session_info,
                                                           timeout=int(self.settings.request_timeout))
            except PyHankoSigningError as exc:
                cause = exc.__cause__ or exc
                raise SigningError(f"{self.name}: cannot read the certificate of {who}: {cause}") from exc
            credential = _Credential.of(info, session_info, self, identity)
            if credential.valid(now):
                return credential
            found.append(credential)
        return found[0]  # none valid: the first one, so signing refuses it with the reason


@dataclass
class _Credential:
    """One signer's credential at the service: certificate, batching pyHanko signer, sizes."""
    info: CSCCredentialInfo
    signer: "_BatchingSigner"
    bytes_reserved: int
    bytes_reserved_timestamped: int
    not_before: dt.datetime
    not_after: dt.datetime
    fetched: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, info: CSCCredentialInfo, session_info: CSCServiceSessionInfo, owner: CscSigner,
           identity: SigningIdentity) -> "_Credential":
        approval = _Approval(session_info, info, owner.client, owner.settings, identity)
        batch = min(owner.settings.batch_size, max(info.max_batch_size, 1))
        signer = _BatchingSigner(owner.client.session, approval, batch_size=batch,
                                 window=owner.settings.batch_window,
                                 sign_timeout=int(owner.settings.request_timeout))
        validity = info.signing_cert["tbs_certificate"]["validity"]
        return cls(info, signer, reserve_bytes(signer), reserve_bytes(signer, timestamp=True),
                   validity["not_before"].native, validity["not_after"].native)

    def valid(self, now: dt.datetime) -> bool:
        return self.not_before <= now <= self.not_after

    def fresh(self, now: dt.datetime, ttl: float) -> bool:
        # A certificate past its end is looked up again: the service may hold a renewed one.
        return self.valid(now) and time.monotonic() - self.fetched < ttl

    def refuse_if_invalid(self, identity: SigningIdentity, now: dt.datetime) -> None:
        refuse_outside_validity(f"{identity.role} {identity.name} (personal id {identity.key})",
                                self.not_before, self.not_after, now, held="at the signing service")


# --- batching ---------------------------------------------------------------------------------

@dataclass
class _Batch:
    digest_algorithm: str
    result: asyncio.Future
    data: list[bytes] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task | None = None


class _BatchingSigner(CSCSigner):
    """pyHanko's ``CSCSigner`` with a time window: a batch is sent when it is full *or* when
    ``window`` seconds have passed since its first hash, so a lone document does not wait for
    company that never comes. A failed batch fails each of its documents with the reason."""

    def __init__(self, session: aiohttp.ClientSession, auth_manager: "_Approval", *, batch_size: int,
                 window: float, sign_timeout: int):
        super().__init__(session, auth_manager, sign_timeout=sign_timeout, batch_size=batch_size,
                         batch_autocommit=True)
        # pyHanko's credential store holds the signer's certificate too, and the CMS would carry
        # it twice (a bigger signature than reserved); the chain alone, as for local keys.
        first = self.signing_cert.dump()
        self._cert_registry = SimpleCertificateStore.from_certs(
            [c for c in auth_manager.credential_info.chain if c.dump() != first])
        self.window = window
        self._open: dict[str, _Batch] = {}
        self._running: set[asyncio.Task] = set()

    async def async_sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        if dry_run:
            return bytes(self.est_raw_signature_size)
        signature = await self._queue(data, base64_digest(data, digest_algorithm), digest_algorithm)
        self._check(signature, data, digest_algorithm)
        return signature

    async def async_sign_digest(self, digest: bytes, digest_algorithm: str) -> bytes:
        """The raw signature of a digest the document layer computed (the XML học bạ's SignedInfo)."""
        signature = await self._queue(b"", base64.b64encode(digest).decode(), digest_algorithm)
        public = serialization.load_der_public_key(self.signing_cert.public_key.dump())
        if not verify_digest(public, signature, digest, digest_algorithm):
            approval: _Approval = self.auth_manager  # type: ignore[assignment]
            raise SigningError(f"the signing service returned a signature for {approval.who} that does "
                               f"not verify against the certificate; not used")
        return signature

    async def _queue(self, data: bytes, hash_b64: str, digest_algorithm: str) -> bytes:
        loop = asyncio.get_running_loop()
        batch = self._open.get(digest_algorithm)
        if batch is None:
            batch = self._open[digest_algorithm] = _Batch(digest_algorithm, loop.create_future())
            batch.timer = loop.call_later(self.window, self._send, batch)
        index = len(batch.data)
        batch.data.append(data)
        batch.hashes.append(hash_b64)
        if len(batch.data) >= self.batch_size:
            self._send(batch)
        signatures = await asyncio.shield(batch.result)
        return signatures[index]

    def abandon(self) -> None:
        """Stop waiting for approvals (the signer is closing); their records stay unsigned."""
        for batch in list(self._open.values()):
            if batch.timer is not None:
                batch.timer.cancel()
            batch.result.cancel()
        self._open.clear()
        for task in list(self._running):
            task.cancel()

    def _send(self, batch: _Batch) -> None:
        if self._open.get(batch.digest_algorithm) is batch:
            del self._open[batch.digest_algorithm]
        if batch.timer is not None:
            batch.timer.cancel()
        if batch.task is None:
            batch.task = asyncio.ensure_future(self._commit_batch(batch))
            self._running.add(batch.task)
            batch.task.add_done_callback(self._running.discard)

    async def _commit_batch(self, batch: _Batch) -> None:
        approval: _Approval = self.auth_manager  # type: ignore[assignment]
        try:
            # format_csc_signing_req asks credentials/authorize (and waits for the phone).
            request = await self.format_csc_signing_req(batch.hashes, batch.digest_algorithm)
            answer = await approval.client.call("signatures/signHash", request)
            encoded = answer.get("signatures")
            if not isinstance(encoded, list) or len(encoded) != len(batch.hashes):
                raise SigningError(f"the service returned {len(encoded or [])} signatures for "
                                   f"{len(batch.hashes)} hashes")
            outcome: Any = [base64.b64decode(s) for s in encoded]
        except SigningError as exc:
            outcome = exc
        except (_ServiceError, PyHankoSigningError, aiohttp.ClientError, asyncio.TimeoutError,
                ValueError) as exc:
            outcome = SigningError(f"remote signing for {approval.who} failed: {type(exc).__name__}: {exc}")
        if batch.result.done():  # abandoned while the service was answering
            return
        if isinstance(outcome, BaseException):
            batch.result.set_exception(outcome)
        else:
            batch.result.set_result(outcome)

    def _check(self, signature: bytes, data: bytes, digest_algorithm: str) -> None:
        # A service bug or a mixed-up credential must not put an invalid signature in a transcript.
        mechanism = self.get_signature_mechanism_for_digest(digest_algorithm)
        try:
            DEFAULT_SIGNATURE_VALIDATOR.validate_signature(
                signature, data, self.signing_cert.public_key, mechanism,
                SignatureValidationContext(contextual_md_algorithm=digest_algorithm))
        except Exception as exc:  # InvalidSignature and malformed values alike
            approval: _Approval = self.auth_manager  # type: ignore[assignment]
            raise SigningError(f"the signing service returned a signature for {approval.who} that does "
                               f"not verify against the certificate ({type(exc).__name__}); not used") from exc


class _Approval(CSCAuthorizationManager):
    """``credentials/authorize`` for a batch of hashes, waiting for the signer's phone."""

    def __init__(self, session_info: CSCServiceSessionInfo, credential_info: CSCCredentialInfo,
                 client: "_Client", settings: CscSigner.Settings, identity: SigningIdentity):
        super().__init__(session_info, credential_info)
        self.client = client
        self.settings = settings
        self.identity = identity
        self.who = f"{identity.role} {identity.name}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {}  # the client's middleware adds the current bearer token

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        n = len(hash_b64s)
        role = ROLE_LABELS.get(self.identity.role, self.identity.role)
        body = self.format_csc_auth_request(
            hash_b64s=hash_b64s, description=f"{role} {self.identity.name} ký {n} học bạ")
        answer = await self.client.call("credentials/authorize", body)
        if "SAD" in answer:
            return self.parse_csc_auth_response(answer)
        transaction = answer.get("transactionID")
        if not transaction:
            raise SigningError(f"the service neither authorized nor queued the request for {self.who}: {answer}")
        interval = float(answer.get("interval") or self.settings.poll_interval)
        deadline = time.monotonic() + self.settings.approval_timeout
        status = answer.get("status", "pending")
        while True:
            if status == "approved":
                return self.parse_csc_auth_response(answer)
            if status == "rejected":
                reason = answer.get("reason")
                raise SigningError(f"{self.who} rejected the request to sign {n} transcript(s)"
                                   + (f": {reason}" if reason else ""))
            if status == "expired":
                raise SigningError(f"{self.who} did not approve the request to sign {n} transcript(s) "
                                   f"before it expired")
            if time.monotonic() + interval > deadline:
                raise SigningError(f"no approval from {self.who} within {self.settings.approval_timeout:g} s "
                                   f"for {n} transcript(s)")
            await asyncio.sleep(interval)
            answer = await self.client.call("credentials/authorize/status", {"transactionID": transaction})
            status = answer.get("status", "pending")


# --- HTTP -------------------------------------------------------------------------------------

class _ServiceError(Exception):
    """The service answered with an error (after retries, for the retryable ones)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class _Client:
    """The HTTP session, the OAuth2 token, and retries — for our calls and pyHanko's alike."""

    def __init__(self, settings: CscSigner.Settings):
        self.settings = settings
        self.base = settings.base_url.rstrip("/")
        self.token_url = settings.token_url or f"{self.base}/oauth2/token"
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise PluginError("csc: the signer is not open")
        return self._session

    async def open(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.settings.request_timeout)
            # Retry outermost, so every try carries the token that is current then.
            self._session = aiohttp.ClientSession(timeout=timeout, middlewares=(self._retry, self._auth))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def token(self, *, stale: str | None = None) -> str:
        async with self._token_lock:
            if self._token and self._token != stale and time.monotonic() < self._token_expires:
                return self._token
            form = {"grant_type": "client_credentials", "client_id": self.settings.client_id,
                    "client_secret": self.settings.client_secret.get_secret_value()}
            async with self.session.post(self.token_url, data=form, middlewares=()) as resp:
                if resp.status in (400, 401, 403):
                    raise PluginError(f"csc: {self.token_url} refused the client credentials "
                                      f"(HTTP {resp.status}); check settings.client_id and settings.client_secret")
                if resp.status >= 400:
                    raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                      message="token endpoint failed")
                body = await resp.json()
            self._token = str(body["access_token"])
            # Renewed a minute early, so a call never starts with a token about to lapse.
            self._token_expires = time.monotonic() + max(float(body.get("expires_in", 3600)) - 60, 1)
            return self._token

    async def _auth(self, request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        if request.url.path.endswith(f"/csc/{self.settings.api_version}/info"):
            return await handler(request)  # the one call the CSC API leaves open
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = await handler(request)
        if response.status == 401:
            response.release()
            request.headers["Authorization"] = f"Bearer {await self.token(stale=token)}"
            response = await handler(request)
        return response

    async def _retry(self, request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        # The hub's one retry policy (a service's Retry-After is believed), as every adapter's.
        attempts = self.settings.attempts
        response: aiohttp.ClientResponse | None = None
        async for attempt in retrying(attempts, self.settings.backoff, 30.0,
                                      (Transient, aiohttp.ClientConnectionError, asyncio.TimeoutError)):
            with attempt:
                response = await handler(request)
                # The last try returns whatever came, for the caller to report.
                if response.status in _RETRY_STATUSES and attempt.retry_state.attempt_number < attempts:
                    response.release()
                    raise Transient(f"HTTP {response.status}",
                                    parse_retry_after(response.headers.get("Retry-After")))
        assert response is not None
        return response

    async def call(self, endpoint: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        """POST a CSC call; the answer's JSON, or ``_ServiceError`` with the service's reason."""
        url = f"{self.base}/csc/{self.settings.api_version}/{endpoint}"
        async with self.session.post(url, json=body) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
            if resp.status >= 400 or not isinstance(answer, dict):
                detail = (answer or {}).get("error_description") or (answer or {}).get("error") \
                    if isinstance(answer, dict) else resp.reason
                raise _ServiceError(resp.status, f"{endpoint}: {detail}")
            return answer
