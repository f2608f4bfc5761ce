"""A remote signing service in the CSC shape (CONTRACT.md), over real HTTP on loopback.

Per-user keys come from a test PKI directory (``hub.kit.pki``: ``<personal id>.p12``), so the
certificates chain to the same root as everything else in a test or the demo. Everything a real
service does to a client is switchable: ``latency`` on every answer, ``approval_delay`` before
the phone says yes, users who ``reject`` or never answer (``unanswered`` → the request
expires), ``max_batch`` (``multisign``), SAD lifetime, and the standard ``faults`` plus
``bad_signature_next_n`` (a signature that does not verify).

Run alone (the bench does, so its CPU is not the hub's)::

    python -m signers.csc.simulator --pki hocba-data/pki --password ... --latency 0.3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.serialization import pkcs12

from hub import Faults, LoopbackServer, Simulator

SHA256 = "2.16.840.1.101.3.4.2.1"
RSA = "1.2.840.113549.1.1.1"
SHA256_RSA = "1.2.840.113549.1.1.11"
DEFAULT_CLIENT_ID = "demo-csc-client"
DEFAULT_CLIENT_SECRET = "demo-csc-secret"


@dataclass
class CscFaults(Faults):
    """The standard switches; the ``*_next_n`` ones count down on ``/csc/v1/`` calls other than
    ``info``. ``bad_signature_next_n``: the next n signatures returned do not verify."""
    bad_signature_next_n: int = 0


@dataclass
class CscCounters:
    """What the service saw, for tests."""
    requests: int = 0
    tokens: int = 0
    authorizations: int = 0   # credentials/authorize calls (one per approval asked of a user)
    approved: int = 0
    rejected: int = 0
    expired: int = 0
    sign_hash_calls: int = 0
    signatures: int = 0
    faulted: int = 0
    largest_batch: int = 0
    largest_request: int = 0  # bytes: shows that hashes, not documents, reach the service


@dataclass
class _Transaction:
    user: str
    credential: str
    hashes: tuple[str, ...]
    created: float
    status: str = "pending"
    sad: str | None = None


@dataclass
class _Sad:
    credential: str
    hashes: frozenset[str]
    expires: float


@dataclass
class _Credential:
    user: str
    key: Any
    chain: list[bytes] = field(default_factory=list)  # DER, the user's certificate first
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None


class CscSimulator(LoopbackServer, Simulator):
    """The CSC-shaped signing service (``CONTRACT.md``) with per-user keys from a test PKI."""

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0,
                 pki_dir: Path | str | None = None, password: str | None = None,
                 latency: float = 0.0, approval_delay: float = 0.0, max_batch: int = 100,
                 sad_lifetime: float = 300.0, approval_lifetime: float = 120.0,
                 poll_interval: float = 0.2, client_id: str = DEFAULT_CLIENT_ID,
                 client_secret: str = DEFAULT_CLIENT_SECRET, token_lifetime: int = 3600):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.pki_dir = Path(pki_dir) if pki_dir else None
        self.password = password
        self.latency = latency
        self.approval_delay = approval_delay
        self.max_batch = max_batch
        self.sad_lifetime = sad_lifetime
        self.approval_lifetime = approval_lifetime
        self.poll_interval = poll_interval
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.reject: set[str] = set()       # user ids that say no on their phone
        self.unanswered: set[str] = set()   # user ids that never answer: requests expire
        self.faults = CscFaults()
        self.counters = CscCounters()
        self.base_url: str | None = None
        self._tokens: dict[str, float] = {}
        self._transactions: dict[str, _Transaction] = {}
        self._sads: dict[str, _Sad] = {}
        self._credentials: dict[str, _Credential] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self.pki_dir is None:
            # No PKI given: issue one for every synthetic identity (the demo's set).
            from hub import ensure_pki, signing_identities

            self._tmp = tempfile.TemporaryDirectory(prefix="csc-sim-")
            self.pki_dir = Path(self._tmp.name)
            self.password = self.password or "csc-simulator"
            await asyncio.to_thread(ensure_pki, self.pki_dir, signing_identities(), self.password)
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/oauth2/token", self._token)
        app.router.add_post("/csc/v1/info", self._info)
        app.router.add_post("/csc/v1/credentials/list", self._list)
        app.router.add_post("/csc/v1/credentials/info", self._credential_info)
        app.router.add_post("/csc/v1/credentials/authorize", self._authorize)
        app.router.add_post("/csc/v1/credentials/authorize/status", self._authorize_status)
        app.router.add_post("/csc/v1/signatures/signHash", self._sign_hash)
        return await self._serve(app, host, port, shutdown_timeout=0.5)

    async def stop(self) -> None:
        await self._shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def adapter_settings(self) -> dict[str, Any]:
        """Settings that point the ``csc`` signer at this service."""
        if self.base_url is None:
            raise RuntimeError("CscSimulator.start() must run before adapter_settings()")
        return {"base_url": self.base_url, "client_id": self.client_id, "client_secret": self.client_secret}

    def expire_tokens(self) -> None:
        self._tokens.clear()

    # --- faults, latency, auth ------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.counters.requests += 1
        self.counters.largest_request = max(self.counters.largest_request, request.content_length or 0)
        if self.latency or self.faults.slow_seconds:
            await asyncio.sleep(self.latency + self.faults.slow_seconds)
        f = self.faults
        counted = request.path.startswith("/csc/v1/") and request.path != "/csc/v1/info"
        if counted and f.drop_next_n_connections > 0:
            f.drop_next_n_connections -= 1
            self.counters.faulted += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if f.outage:
            self.counters.faulted += 1
            return _error(503, "temporarily_unavailable", "outage",
                          headers={"Retry-After": str(f.retry_after_seconds)})
        if counted and f.fail_next_n > 0:
            f.fail_next_n -= 1
            self.counters.faulted += 1
            return _error(503, "temporarily_unavailable", "injected failure")
        if counted and f.rate_limit_next_n > 0:
            f.rate_limit_next_n -= 1
            self.counters.faulted += 1
            return _error(429, "slow_down", "rate limited",
                          headers={"Retry-After": str(f.retry_after_seconds)})
        if counted:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or self._tokens.get(token.strip(), 0) < time.monotonic():
                return _error(401, "invalid_token", "missing, unknown or expired access token")
        return await handler(request)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", "only client_credentials")
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _error(401, "invalid_client", "unknown client_id or wrong client_secret")
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.token_lifetime
        self.counters.tokens += 1
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.token_lifetime})

    # --- credentials ----------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "specs": "1.0.4.0", "name": "hocba-hub CSC simulator", "lang": "vi-VN",
            "authType": ["oauth2client"],
            "methods": ["credentials/list", "credentials/info", "credentials/authorize",
                        "credentials/authorize/status", "signatures/signHash"],
        })

    def _load(self, user: str) -> _Credential | None:
        cached = self._credentials.get(user)
        if cached is not None:
            return cached
        assert self.pki_dir is not None
        path = self.pki_dir / f"{user}.p12"
        if "/" in user or not path.is_file():
            return None
        secret = (self.password or "").encode()
        key, cert, chain = pkcs12.load_key_and_certificates(path.read_bytes(), secret)
        credential = _Credential(
            user, key, [c.public_bytes(serialization.Encoding.DER) for c in (cert, *chain)],
            cert.not_valid_before_utc, cert.not_valid_after_utc)
        self._credentials[user] = credential
        return credential

    def preload(self) -> int:
        """Open every key file now; return how many (a bench keeps this work out of its timing)."""
        assert self.pki_dir is not None
        return sum(self._load(path.stem) is not None for path in sorted(self.pki_dir.glob("*.p12")))

    async def _list(self, request: web.Request) -> web.Response:
        body = await request.json()
        user = str(body.get("userID", ""))
        credential = await asyncio.to_thread(self._load, user) if user else None
        return web.json_response({"credentialIDs": [f"cred-{user}"] if credential else []})

    def _credential_of(self, credential_id: Any) -> _Credential | None:
        if not isinstance(credential_id, str) or not credential_id.startswith("cred-"):
            return None
        return self._load(credential_id.removeprefix("cred-"))

    async def _credential_info(self, request: web.Request) -> web.Response:
        body = await request.json()
        credential = self._credential_of(body.get("credentialID"))
        if credential is None:
            return _error(400, "invalid_request", "unknown credentialID")
        now = dt.datetime.now(dt.timezone.utc)
        valid = credential.not_before <= now <= credential.not_after
        return web.json_response({
            "key": {"status": "enabled", "algo": [SHA256_RSA], "len": 2048},
            "cert": {
                "status": "valid" if valid else ("expired" if now > credential.not_after else "not_yet_valid"),
                "certificates": [base64.b64encode(c).decode() for c in credential.chain],
                "validFrom": credential.not_before.strftime("%Y%m%d%H%M%SZ"),
                "validTo": credential.not_after.strftime("%Y%m%d%H%M%SZ"),
            },
            "authMode": "explicit",
            "SCAL": "2",
            "multisign": self.max_batch,
        })

    # --- approval -------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.Response:
        body = await request.json()
        credential = self._credential_of(body.get("credentialID"))
        if credential is None:
            return _error(400, "invalid_request", "unknown credentialID")
        hashes_ = body.get("hash")
        if not isinstance(hashes_, list) or not hashes_:
            return _error(400, "invalid_request", "SCAL 2: the hashes to sign are required")
        if len(hashes_) > self.max_batch:
            return _error(400, "invalid_request",
                          f"{len(hashes_)} hashes in one authorization; multisign is {self.max_batch}")
        if int(body.get("numSignatures", len(hashes_))) != len(hashes_):
            return _error(400, "invalid_request", "numSignatures does not match the hashes")
        self.counters.authorizations += 1
        self.counters.largest_batch = max(self.counters.largest_batch, len(hashes_))
        txn = _Transaction(credential.user, body["credentialID"], tuple(hashes_), time.monotonic())
        transaction_id = secrets.token_hex(8)
        self._transactions[transaction_id] = txn
        self._advance(txn)
        if txn.status == "approved":
            return web.json_response({"SAD": txn.sad, "expiresIn": int(self.sad_lifetime)})
        return web.json_response({"status": txn.status, "transactionID": transaction_id,
                                  "interval": self.poll_interval})

    def _advance(self, txn: _Transaction) -> None:
        # The phone's answer, decided lazily from the clock: no background task to clean up.
        if txn.status != "pending":
            return
        waited = time.monotonic() - txn.created
        if txn.user in self.unanswered:
            if waited >= self.approval_lifetime:
                txn.status = "expired"
                self.counters.expired += 1
            return
        if waited < self.approval_delay:
            return
        if txn.user in self.reject:
            txn.status = "rejected"
            self.counters.rejected += 1
            return
        txn.status = "approved"
        txn.sad = secrets.token_urlsafe(24)
        self._sads[txn.sad] = _Sad(txn.credential, frozenset(txn.hashes), time.monotonic() + self.sad_lifetime)
        self.counters.approved += 1

    async def _authorize_status(self, request: web.Request) -> web.Response:
        body = await request.json()
        txn = self._transactions.get(str(body.get("transactionID")))
        if txn is None:
            return _error(400, "invalid_request", "unknown transactionID")
        self._advance(txn)
        if txn.status == "approved":
            return web.json_response({"status": "approved", "SAD": txn.sad, "expiresIn": int(self.sad_lifetime)})
        if txn.status == "rejected":
            return web.json_response({"status": "rejected", "reason": "the signer declined on their phone"})
        return web.json_response({"status": txn.status})

    # --- signing --------------------------------------------------------------------------

    async def _sign_hash(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.counters.sign_hash_calls += 1
        credential = self._credential_of(body.get("credentialID"))
        if credential is None:
            return _error(400, "invalid_request", "unknown credentialID")
        sad = self._sads.get(str(body.get("SAD")))
        if sad is None or sad.credential != body.get("credentialID"):
            return _error(400, "invalid_request", "SAD unknown or issued for another credential")
        if sad.expires < time.monotonic():
            return _error(400, "invalid_request", "SAD expired")
        hashes_ = body.get("hash") or []
        if not set(hashes_) <= sad.hashes:
            return _error(400, "invalid_request", "a hash was not part of the authorization (SCAL 2)")
        if body.get("hashAlgo", SHA256) != SHA256 or body.get("signAlgo") not in (SHA256_RSA, RSA):
            return _error(400, "invalid_request", "only SHA-256 with RSA PKCS#1 v1.5 is supported")
        signatures = []
        for h in hashes_:
            digest = base64.b64decode(h)
            signature = credential.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
            if self.faults.bad_signature_next_n > 0:
                self.faults.bad_signature_next_n -= 1
                signature = bytes([signature[0] ^ 0xFF]) + signature[1:]
            signatures.append(base64.b64encode(signature).decode())
        self.counters.signatures += len(signatures)
        return web.json_response({"signatures": signatures})


def _error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status, headers=headers)


async def _serve(args: argparse.Namespace) -> None:
    simulator = CscSimulator(pki_dir=args.pki, password=args.password, latency=args.latency,
                             approval_delay=args.approval_delay, max_batch=args.max_batch)
    url = await simulator.start(port=args.port)
    if args.preload:
        await asyncio.to_thread(simulator.preload)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="CSC-shaped remote signing simulator on loopback")
    parser.add_argument("--pki", help="test PKI directory with <personal id>.p12 files")
    parser.add_argument("--password", help="password of the .p12 files")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--approval-delay", type=float, default=0.0, help="seconds until the phone approves")
    parser.add_argument("--max-batch", type=int, default=100, help="hashes one authorization may cover")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--preload", action="store_true",
                        help="open every key file before answering (a real service has them open)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
