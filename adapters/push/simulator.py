"""A school system that pushes to the hub: the client side of the push contract (CONTRACT.md).

Unlike the pull simulators, this one serves nothing: it *sends*. It fits the ``Simulator``
protocol so the demo and the kit can treat every source alike:

- ``start()`` opens its HTTP client and returns ``""`` — there is no URL to point an adapter at;
- ``adapter_settings()`` gives the shared ``secret`` the hub's ``push`` adapter needs;
- once the hub serves HTTP, ``await push(hub_base_url, adapter_name)`` POSTs the seeded records
  (valid ones with the vendor quirks the hub must clean, plus ``invalid`` deliberately broken
  ones whose defect is in ``defects``), correctly signed;
- ``send_bad_signature``, ``send_stale``, ``replay_last``, ``send_oversized`` and ``send_raw``
  send what an attacker or a broken client would, for tests and fault drills.

``faults`` (the common switches) do not apply: a client has no server side to fail.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from adapters.push.adapter import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from hub import (
    INVALID_KINDS,
    ROOT_CERT,
    Simulator,
    invalid_transcript,
    nfd,
    record_id_for,
    sign_xml,
    transcript,
    with_subject_teachers,
)

FIRST_UPDATE = dt.datetime(2025, 6, 1, 7, 0, 0)


@dataclass(frozen=True)
class Sent:
    """One request the simulator made and the hub's answer."""
    url: str
    status: int
    body: Any                      # the JSON answer, or the text when it is not JSON
    request: bytes
    headers: dict[str, str]


def ingest_url(base_url: str, adapter: str) -> str:
    return f"{base_url.rstrip('/')}/ingest/{adapter}"


def _quirky(record: dict[str, Any], index: int) -> dict[str, Any]:
    """The record as a real client would send it: some NFD names, dd/MM/yyyy dates, comma decimals."""
    record = copy.deepcopy(record)
    if index % 3 == 1:
        record["student"]["full_name"] = nfd(record["student"]["full_name"])
        year, month, day = record["student"]["birth_date"].split("-")
        record["student"]["birth_date"] = f"{day}/{month}/{year}"
    if index % 3 == 2:
        for subject in record["subjects"]:
            for key in ("term1_average", "term2_average", "year_average"):
                if isinstance(subject.get(key), float):
                    subject[key] = f"{subject[key]:.1f}".replace(".", ",")
    return record


class PushSimulator(Simulator):
    """Pushes synthetic transcripts to a hub's ``/ingest/{adapter}``, signed with a shared secret."""
    page_size = None

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, secret: str | None = None):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.secret = secret or secrets.token_urlsafe(32)
        self.defects: dict[str, tuple[str, str]] = {}      # source_id → (kind, field the hub must name)
        self.sent: list[Sent] = []
        self._session: aiohttp.ClientSession | None = None
        self._envelopes = self._seed()

    def _seed(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.records):
            out.append(self.envelope(self.source_id(i), _quirky(self.seeded(i), i),
                                     FIRST_UPDATE + dt.timedelta(minutes=i)))
        for j in range(self.invalid):
            record, kind, field = invalid_transcript(j, self.seed, INVALID_KINDS[j % len(INVALID_KINDS)])
            source_id = f"push-{self.seed}-invalid-{j:03d}"
            self.defects[source_id] = (kind, field)
            out.append(self.envelope(source_id, record, FIRST_UPDATE + dt.timedelta(hours=1, minutes=j)))
        return out

    def seeded(self, index: int) -> dict[str, Any]:
        """The central format names each subject's teacher, so pushed secondary records do."""
        return with_subject_teachers(transcript(index, self.seed))

    def source_id(self, index: int) -> str:
        return f"push-{self.seed}-{index:05d}"

    def sign_xml(self, instance: str, directory: Path, password: str,
                 roles: tuple[str, ...] = ("subject_teacher", "homeroom_teacher")) -> Path:
        """Attach ``signed_xml`` to every valid seeded record: its XML học bạ signed in ``roles``
        with this sender's own test PKI in ``directory`` (root "School Software Test CA", created
        there), as teachers who sign in the school's software deliver it. ``instance`` is the
        hub's push adapter name (the XML states the hub's record id, CONTRACT.md). Returns the
        root certificate the hub must trust."""
        for i in range(self.records):
            envelope = self._envelopes[i]
            central = {**self.seeded(i), "record_id": record_id_for(instance, envelope["source_id"]),
                       "version": 1, "event": "NEW", "updated_at": envelope["updated_at"]}
            document = sign_xml(central, roles, directory, password, root_name="School Software Test CA")
            envelope["signed_xml"] = base64.b64encode(document).decode("ascii")
        return Path(directory) / ROOT_CERT

    @staticmethod
    def envelope(source_id: str, record: dict[str, Any], updated: dt.datetime, *, deleted: bool = False) -> dict[str, Any]:
        return {"source_id": source_id, "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%S"),
                "deleted": deleted, "transcript": record}

    def envelopes(self) -> list[dict[str, Any]]:
        """Every seeded record (valid first, then the invalid ones), as it will be pushed."""
        return copy.deepcopy(self._envelopes)

    # --- Simulator protocol --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return ""  # a client: nothing to point the adapter at but the secret

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def adapter_settings(self) -> dict[str, Any]:
        return {"secret": self.secret}

    # --- sending ----------------------------------------------------------------------------------

    def headers(self, body: bytes, *, timestamp: int | None = None, secret: str | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: sign(secret or self.secret, stamp, body)}

    async def send_raw(self, url: str, body: bytes, headers: dict[str, str]) -> Sent:
        """POST exactly ``body`` with exactly ``headers``."""
        if self._session is None:
            await self.start()
        async with self._session.post(url, data=body, headers=headers) as response:
            text = await response.text()
            try:
                answer: Any = json.loads(text)
            except ValueError:
                answer = text
            sent = Sent(url, response.status, answer, body, dict(headers))
        self.sent.append(sent)
        return sent

    async def send(self, url: str, payload: Any, **signing: Any) -> Sent:
        """POST ``payload`` (an envelope or a list of them) as JSON, signed now."""
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return await self.send_raw(url, body, self.headers(body, **signing))

    async def push(self, base_url: str, adapter: str, *, batch_size: int = 10) -> list[Sent]:
        """Push every seeded record to ``base_url``'s ``/ingest/{adapter}``, ``batch_size`` per request."""
        url = ingest_url(base_url, adapter)
        answers = []
        for start in range(0, len(self._envelopes), batch_size):
            answers.append(await self.send(url, self._envelopes[start:start + batch_size]))
        return answers

    async def feed(self, hub_url: str, instance: str) -> None:
        """The demo's vendor: push every seeded record; a refusal is an error, not a shrug."""
        refused = [a for a in await self.push(hub_url, instance) if a.status != 202]
        if refused:
            raise RuntimeError(f"the hub refused {len(refused)} push(es): {refused[0].status} {refused[0].body}")

    async def send_bad_signature(self, url: str, payload: Any) -> Sent:
        return await self.send(url, payload, secret="not-" + self.secret)

    async def send_stale(self, url: str, payload: Any, *, age_seconds: int = 3600) -> Sent:
        """Correctly signed, but with a timestamp ``age_seconds`` old (a captured request replayed later)."""
        return await self.send(url, payload, timestamp=int(time.time()) - age_seconds)

    async def replay_last(self) -> Sent:
        """Send the last request again, byte for byte (same timestamp, same signature)."""
        last = self.sent[-1]
        return await self.send_raw(last.url, last.request, last.headers)

    async def send_oversized(self, url: str, size: int) -> Sent:
        """A correctly signed JSON array padded to ``size`` bytes."""
        empty = json.dumps([{"source_id": "padding", "transcript": {"padding": ""}}]).encode()
        filler = "x" * max(0, size - len(empty))
        body = json.dumps([{"source_id": "padding", "transcript": {"padding": filler}}]).encode()
        return await self.send_raw(url, body, self.headers(body))
