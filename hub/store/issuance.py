"""The issuance registry: every copy of a transcript the hub hands out, and the code that checks it.

Each rendered version gets one verification code, printed as a QR code in its PDF before the
first signature (``hub.documents.qr``). The code belongs to the version, not to each copy: the
PDF is signed once per version (by people and the school, some on a phone), so a copy cannot
carry a code of its own without being signed again. Each copy the hub issues (delivery to the
destination, a download through the admin API) is an append-only ``issuance`` entry naming the
version's code, the document and its SHA-256, when, by whom and to whom or for what, written in
the same transaction as its audit-chain entry — so the registry cannot say more than the chain.

Codes: 80 random bits in base32 (16 characters, ``A–Z2–7``), shown in groups of four. Unguessable
by enumeration, and easy to type from paper: people may type them in lower case, with spaces or
dashes (``normalize_code``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from hub.store.model import now_iso

__all__ = ["DOCUMENTS", "Issued", "IssuanceRegistry", "format_code", "new_code", "normalize_code"]

DOCUMENTS = ("pdf", "xml")
CODE_LENGTH = 16
_CODE = re.compile(r"^[A-Z2-7]{16}$")


def new_code() -> str:
    """A fresh verification code: 80 random bits, base32."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")


def normalize_code(text: str) -> str | None:
    """The code someone typed or scanned, in its stored form; ``None`` if it cannot be one."""
    code = re.sub(r"[\s\-.]", "", text or "").upper()
    return code if _CODE.match(code) else None


def format_code(code: str) -> str:
    """``ABCDEFGHIJKLMNOP`` → ``ABCD-EFGH-IJKL-MNOP`` (as printed)."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


@dataclass(frozen=True)
class Issued:
    """One issuance entry as stored."""
    id: int
    code: str
    record_id: str
    version: int
    document: str
    sha256: str
    issued_at: str
    actor: str
    recipient: str | None
    purpose: str | None


class IssuanceRegistry:
    """The store's issuance methods; ``hub.store.base.Store`` (both backends) inherits them.

    Uses the store's ``_write``, ``_lock``, ``_db`` and ``_audit``; the SQL is plain SQL with
    named binds, the same on both backends.
    """

    def _issue(self, db: Any, pk: int, document: str, *, actor: str, recipient: str | None,
               purpose: str | None, audit_kind: str, now: str) -> Issued:
        if document not in DOCUMENTS:
            raise ValueError(f"document must be one of {', '.join(DOCUMENTS)}, not {document!r}")
        row = db.execute(f"SELECT record_id, version, verify_code, {document} AS body FROM records WHERE id = :pk",
                         {"pk": pk}).fetchone()
        if row is None:
            raise KeyError(pk)
        if row["body"] is None:
            raise ValueError(f"record {pk} has no {document.upper()} to issue")
        if not row["verify_code"]:
            raise ValueError(f"record {pk} has no verification code (rendered before the issuance registry)")
        digest = hashlib.sha256(bytes(row["body"])).hexdigest()
        entry_id = db.execute(
            "INSERT INTO issuance (code, record_id, version, document, sha256, issued_at, actor, recipient, purpose)"
            " VALUES (:code, :record_id, :version, :document, :sha256, :now, :actor, :recipient, :purpose) RETURNING id",
            {"code": row["verify_code"], "record_id": row["record_id"], "version": row["version"],
             "document": document, "sha256": digest, "now": now, "actor": actor, "recipient": recipient,
             "purpose": purpose}).fetchone()[0]
        self._audit(db, audit_kind, actor, row["record_id"], {
            "version": row["version"], "issuance": entry_id, "code": row["verify_code"], "document": document,
            "sha256": digest, "recipient": recipient, "purpose": purpose})
        return Issued(entry_id, row["verify_code"], row["record_id"], row["version"], document, digest, now,
                      actor, recipient, purpose)

    def issue(self, pk: int, document: str, *, actor: str, recipient: str | None = None,
              purpose: str | None = None, audit_kind: str = "issue") -> Issued:
        """Record that ``actor`` hands out record ``pk``'s ``document`` (``pdf``/``xml``) as it is
        stored now, to ``recipient`` or for ``purpose``; audited as ``audit_kind``."""
        return self._write(lambda db: self._issue(db, pk, document, actor=actor, recipient=recipient,
                                                  purpose=purpose, audit_kind=audit_kind, now=now_iso()))

    def issued(self, *, code: str | None = None, record_id: str | None = None) -> list[Issued]:
        """Issuance entries of one code or one record, oldest first."""
        if (code is None) == (record_id is None):
            raise ValueError("give exactly one of code, record_id")
        column, value = ("code", code) if code is not None else ("record_id", record_id)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM issuance WHERE {column} = :value ORDER BY id",
                                   {"value": value}).fetchall()
        return [Issued(**{k: r[k] for k in Issued.__dataclass_fields__}) for r in rows]

    def by_code(self, code: str) -> dict[str, Any] | None:
        """What a verification code names: the version (``record_id``, ``version``, ``event``,
        ``state``, ``school_code``, ``school_year``, ``normalized``, ``pdf``, ``xml``) and its
        record's newest version (``latest_version``, ``latest_event``, ``latest_state``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, record_id, version, event, state, school_code, school_year, normalized, pdf, xml"
                " FROM records WHERE verify_code = :code", {"code": code}).fetchone()
            if row is None:
                return None
            out = {k: row[k] for k in row.keys()}
            out.update(self.latest_of(out["record_id"]))
        return out

    def latest_of(self, record_id: str) -> dict[str, Any]:
        """The newest version of ``record_id``: ``latest_version``, ``latest_event``, ``latest_state``."""
        with self._lock:
            latest = self._db.execute("SELECT version, event, state FROM records WHERE record_id = :rid"
                                      " ORDER BY version DESC LIMIT 1", {"rid": record_id}).fetchone()
        if latest is None:
            return {"latest_version": None, "latest_event": None, "latest_state": None}
        return {"latest_version": latest["version"], "latest_event": latest["event"],
                "latest_state": latest["state"]}

    def version_of(self, record_id: str, version: int) -> dict[str, Any] | None:
        """One stored version (``state``, ``event``, ``verify_code``) and its record's newest, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT record_id, version, event, state, verify_code FROM records"
                                   " WHERE record_id = :rid AND version = :version",
                                   {"rid": record_id, "version": version}).fetchone()
            if row is None:
                return None
            out = {k: row[k] for k in row.keys()}
            out.update(self.latest_of(record_id))
        return out
