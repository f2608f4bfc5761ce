"""The Ministry's transcript store's contract (CONTRACT.md) served over real HTTP, with faults.

The simulator is the reference the ``moet`` adapter is tested against. It takes class packages
only (``PUT /api/v2/packages/{id}``; one transcript at a time is the National Data Centre's sync,
``adapters/ttdlqg``) and enforces every rule of the contract: the token; the Department's
signature on the manifest must verify and chain to ``trust_roots`` (and, when ``registered`` is
set, be the certificate the Department registered), every file must match its SHA-256 and every
transcript's own signatures must verify (``hub.verify_package``); a package id is idempotent,
versions only go up, a package can be recalled and one transcript cancelled, each with a
mandatory reason. It keeps everything it received so a test can look at it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from hub import (
    MAX_PACKAGE_BYTES,
    PACKAGE_MEDIA_TYPE,
    Attempt,
    ClassPackage,
    DestinationSimulator,
    Faults,
    PackageError,
    Reject,
    verify_package,
)

DEFAULT_TOKEN = "demo-moet-token"
PACKAGES_PATH = "/api/v2/packages"
TRANSCRIPTS_PATH = "/api/v2/transcripts"
_PACKAGE_PUT = re.compile(r"^/api/v2/packages/[^/]+$")


@dataclass
class MoetFaults(Faults):
    """The standard fault switches (``hub.contracts.Faults``), as the central store applies them.

    ``outage`` affects every route and ``slow_seconds`` every answer a route produced, so
    ``check()`` sees them too. The ``*_next_n`` counters are consumed by package submissions
    (``PUT /api/v2/packages/{id}``) only, so a test can say "the next two deliveries fail"
    without health checks eating the faults. ``slow_seconds`` delays an answer after the request
    was processed. ``reject_next_n`` answers the next n submissions ``422`` (a refusal the sender
    must not retry), so a test sees a permanent failure as well as transient ones.
    """
    reject_next_n: int = 0


@dataclass
class MoetCounters:
    """How many requests the simulator saw, and what became of the package submissions."""
    requests: int = 0        # every request, any route
    unauthorized: int = 0    # 401, any route
    faulted: int = 0         # injected 503 / 429 / dropped connection
    packages: int = 0        # PUT /api/v2/packages/{id}, including faulted ones
    packages_created: int = 0
    packages_duplicate: int = 0
    packages_refused: int = 0  # 400, 409, 413, 422
    recalls: int = 0         # packages recalled (a repeated recall is not counted again)
    cancels: int = 0         # transcripts cancelled


class MoetSimulator(DestinationSimulator):
    """The central transcript store over HTTP on loopback (see ``adapters/moet/CONTRACT.md``).

    What it received stays inspectable: ``packages`` and ``package_files`` keyed by package id,
    ``transcripts`` keyed by ``(record_id, version)``, ``attempts`` (every submission with its
    status code), ``counters``. ``faults`` injects outages, 503s, slowness, dropped connections,
    429s and refusals.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        records: int = 0,
        invalid: int = 0,
        seed: int = 0,
        trust_roots: Sequence[bytes] = (),
        registered: Mapping[str, Sequence[bytes]] | None = None,
        max_package_bytes: int = MAX_PACKAGE_BYTES,
    ):
        super().__init__(token=token, records=records, invalid=invalid, seed=seed)
        self.max_package_bytes = max_package_bytes
        # The anchors every signature must chain to (DER); none: signatures are checked, chains not.
        self.trust_roots: tuple[bytes, ...] = tuple(trust_roots)
        # Department code → the certificates (DER) it registered to send packages; empty: any trusted one.
        self.registered: dict[str, tuple[bytes, ...]] = {k: tuple(v) for k, v in (registered or {}).items()}
        self.packages: dict[str, dict[str, Any]] = {}       # package id → what was accepted, its receipt, state
        self.package_files: dict[str, bytes] = {}           # package id → the container as received
        self.transcripts: dict[tuple[str, int], dict[str, Any]] = {}  # (record id, version) → state
        self.faults = MoetFaults()
        self.counters = MoetCounters()
        self._highest: dict[str, int] = {}

    realm = "moet"

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_put(PACKAGES_PATH + "/{package_id}", self._submit_package)
        app.router.add_get(PACKAGES_PATH + "/{package_id}", self._package_state)
        app.router.add_post(PACKAGES_PATH + "/{package_id}/recall", self._recall)
        app.router.add_get(TRANSCRIPTS_PATH + "/{record_id}", self._transcript_state)
        app.router.add_post(TRANSCRIPTS_PATH + "/{record_id}/versions/{version}/cancel", self._cancel)

    def _submission(self, request: web.Request) -> bool:
        if request.method == "PUT" and _PACKAGE_PUT.match(request.path) is not None:
            self.counters.packages += 1
            return True
        return False

    def _more_faults(self, request: web.Request, submission: bool) -> web.StreamResponse | None:
        if submission and self.faults.reject_next_n > 0:
            self.faults.reject_next_n -= 1
            return self._fault(submission, 422, "injected refusal")
        return None

    def save(self, folder: Path) -> list[Path]:
        """Each package as received (a ZIP: the signed manifest, then each transcript's files)."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for package_id, body in sorted(self.package_files.items()):
            path = folder / f"{package_id}.zip"
            path.write_bytes(body)
            written.append(path)
        return written

    def trust(self, roots: Sequence[bytes]) -> None:
        self.trust_roots = tuple(roots)

    def accepted(self) -> dict[str, int]:
        return dict(self._highest)

    # --- class packages -------------------------------------------------------------------

    def package_state(self, package_id: str) -> dict[str, Any] | None:
        """What ``GET /api/v2/packages/{id}`` answers: the receipt, the package's status and
        reason, and each transcript's current status; ``None`` if the id is unknown."""
        held = self.packages.get(package_id)
        if held is None:
            return None
        return {**held["receipt"], "status": held["status"], "reason": held["reason"], "duplicate": False,
                "transcripts": [self._transcript_receipt(key) for key in held["keys"]]}

    def _transcript_receipt(self, key: tuple[str, int], status: str | None = None) -> dict[str, Any]:
        held = self.transcripts[key]
        return {"record_id": key[0], "version": key[1], "receipt_id": held["receipt_id"],
                "status": status or held["status"], "reason": held["reason"]}

    def _package_refused(self, status: int, package_id: str, error: str, errors: Sequence[str] = (),
                         **extra: Any) -> web.Response:
        self.counters.packages_refused += 1
        self.attempts.append(Attempt(status, reason=error, package_id=package_id))
        return web.json_response({"error": error, "errors": list(errors), **extra}, status=status)

    async def _read_body(self, request: web.Request, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise Reject(413, f"payload of {request.content_length} bytes exceeds {limit}")
        chunks, size = [], 0
        # Counted as it arrives: a chunked upload has no Content-Length to check up front.
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise Reject(413, f"payload exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _content(pkg: ClassPackage) -> str:
        # A package's content is what its manifest lists, not the manifest's bytes: the same class
        # packaged and signed again (a new signing time) is the same package.
        listed = sorted((e.record_id, e.version, e.xml_sha256, e.pdf_sha256) for e in pkg.entries)
        return hashlib.sha256(json.dumps([pkg.department_code, pkg.school_code, pkg.class_name,
                                          pkg.school_year, listed]).encode()).hexdigest()

    def _duplicate(self, package_id: str, content: str) -> web.Response | None:
        held = self.packages.get(package_id)
        if held is None:
            return None
        if held["content"] != content:
            return self._package_refused(409, package_id, f"package {package_id} is already held with other "
                                                          f"content; a changed class is a new package")
        if held["status"] == "recalled":
            return self._package_refused(409, package_id, f"package {package_id} was recalled ({held['reason']}); "
                                                          f"a correction is sent as a new package")
        self.counters.packages_duplicate += 1
        self.attempts.append(Attempt(200, reason="duplicate", package_id=package_id))
        return web.json_response({**self.package_state(package_id), "duplicate": True}, status=200)

    async def _submit_package(self, request: web.Request) -> web.Response:
        package_id = request.match_info["package_id"]
        try:
            if request.content_type != PACKAGE_MEDIA_TYPE:
                raise Reject(400, f"expected {PACKAGE_MEDIA_TYPE}, got {request.content_type or 'no content type'}")
            body = await self._read_body(request, self.max_package_bytes)
            try:
                pkg = ClassPackage.from_zip(body, max_bytes=self.max_package_bytes)
            except PackageError as exc:
                raise Reject(400, f"not a class package: {exc}") from None
        except Reject as reject:
            return self._package_refused(reject.status, package_id, reject.body["error"])
        if pkg.package_id != package_id:
            return self._package_refused(400, package_id, f"the URL names package {package_id} but its manifest "
                                                          f"says {pkg.package_id}")
        content = self._content(pkg)
        duplicate = self._duplicate(package_id, content)
        if duplicate is not None:
            return duplicate
        report = await verify_package(pkg, self.trust_roots)
        problems = report.all_problems()
        registered = self.registered.get(pkg.department_code)
        if report.department is not None and report.department.valid and self.registered and (
                report.department.certificate not in (registered or ())):
            problems.insert(0, f"the Department's signature: the certificate of {report.department.signer} is not "
                               f"the one Department {pkg.department_code} registered to send transcripts")
        if problems:
            return self._package_refused(422, package_id, "package refused", problems)
        # From here to the answer there is no await: a concurrent twin of this package, or another
        # package carrying the same transcript, cannot slip in between the checks and the store.
        duplicate = self._duplicate(package_id, content)
        if duplicate is not None:
            return duplicate
        statuses, conflicts = {}, []
        for e in pkg.entries:
            key = (e.record_id, e.version)
            held = self.transcripts.get(key)
            highest = self._highest.get(e.record_id, 0)
            if held is not None and (held["xml_sha256"], held["pdf_sha256"]) != (e.xml_sha256, e.pdf_sha256):
                conflicts.append(f"{e.label}: this version is already held with other content")
            elif held is not None and held["status"] != "accepted":
                conflicts.append(f"{e.label}: this version was {held['status']} ({held['reason']}); a correction "
                                 f"is sent as a new version")
            elif held is None and e.version <= highest:
                conflicts.append(f"{e.label}: version {e.version} is not above the highest held ({highest})")
            statuses[key] = "duplicate" if held is not None else "accepted"
        if conflicts:
            return self._package_refused(409, package_id, "package refused: version conflict", conflicts)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        receipt = {"package_id": package_id, "receipt_id": f"MOET-PKG-{uuid.uuid4().hex}", "received_at": now,
                   "department": pkg.department_code, "school": pkg.school_code, "class": pkg.class_name,
                   "school_year": pkg.school_year}
        for e in pkg.entries:
            key = (e.record_id, e.version)
            if key not in self.transcripts:
                self.transcripts[key] = {"receipt_id": f"MOET-{uuid.uuid4().hex}", "package_id": package_id,
                                         "received_at": now, "xml_sha256": e.xml_sha256,
                                         "pdf_sha256": e.pdf_sha256, "status": "accepted", "reason": ""}
                self._highest[e.record_id] = max(self._highest.get(e.record_id, 0), e.version)
        self.packages[package_id] = {"receipt": receipt, "content": content, "status": "accepted", "reason": "",
                                     "keys": [(e.record_id, e.version) for e in pkg.entries]}
        self.package_files[package_id] = body
        self.counters.packages_created += 1
        self.attempts.append(Attempt(201, reason="created", package_id=package_id))
        answer = self.package_state(package_id)
        answer["transcripts"] = [self._transcript_receipt(key, statuses[key]) for key in self.packages[package_id]["keys"]]
        return web.json_response(answer, status=201)

    async def _package_state(self, request: web.Request) -> web.Response:
        return self._held(self.package_state(request.match_info["package_id"]), "unknown package")

    async def _transcript_state(self, request: web.Request) -> web.Response:
        record_id = request.match_info["record_id"]
        versions = {v: self._transcript_receipt((r, v)) for r, v in self.transcripts if r == record_id}
        if not versions:
            return web.json_response({"error": "unknown record", "errors": []}, status=404)
        return web.json_response({"record_id": record_id, "highest_version": max(versions),
                                  "versions": [versions[v] for v in sorted(versions)]})

    async def _reason(self, request: web.Request) -> str:
        try:
            body = json.loads(await self._read_body(request, 64 * 1024) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Reject(400, f"the body is not JSON: {exc}") from None
        reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            raise Reject(422, "a reason is required", ["reason: required, a non-empty text"])
        if len(reason) > 1000:
            raise Reject(422, "reason too long", ["reason: at most 1000 characters"])
        return reason.strip()

    async def _recall(self, request: web.Request) -> web.Response:
        package_id = request.match_info["package_id"]
        held = self.packages.get(package_id)
        if held is None:
            return web.json_response({"error": "unknown package", "errors": []}, status=404)
        reason = await self._reason(request)
        if held["status"] == "recalled":
            return web.json_response({**held["recall"], "duplicate": True})
        held["status"], held["reason"] = "recalled", reason
        for key in held["keys"]:
            transcript = self.transcripts[key]
            # A transcript carried by a later package too stays with that package; one already
            # cancelled keeps its own reason.
            if transcript["package_id"] == package_id and transcript["status"] == "accepted":
                transcript["status"], transcript["reason"] = "recalled", reason
        held["recall"] = {"receipt_id": f"MOET-RCL-{uuid.uuid4().hex}",
                          "received_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "package_id": package_id, "status": "recalled", "reason": reason}
        self.counters.recalls += 1
        return web.json_response({**held["recall"], "duplicate": False})

    async def _cancel(self, request: web.Request) -> web.Response:
        record_id, version = request.match_info["record_id"], request.match_info["version"]
        key = (record_id, int(version)) if version.isdigit() else None
        held = self.transcripts.get(key) if key else None
        if held is None:
            return web.json_response({"error": f"{record_id} v{version} is not held", "errors": []}, status=404)
        reason = await self._reason(request)
        if held["status"] == "cancelled":
            return web.json_response({**held["cancel"], "duplicate": True})
        if held["status"] == "recalled":
            return web.json_response({"error": f"{record_id} v{version} was recalled with its package "
                                               f"({held['reason']}); there is nothing to cancel", "errors": []},
                                     status=409)
        held["status"], held["reason"] = "cancelled", reason
        held["cancel"] = {"receipt_id": f"MOET-HUY-{uuid.uuid4().hex}",
                          "received_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "record_id": record_id, "version": key[1], "status": "cancelled", "reason": reason}
        self.counters.cancels += 1
        return web.json_response({**held["cancel"], "duplicate": False})

