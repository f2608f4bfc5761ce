"""The package ledger: each class package a destination accepted, and its recall.

A destination that takes a class at a time (``Adapter.deliver_package``) gets one package per
class (``hub.documents.package``). The package and every transcript's outcome are stored in one
transaction (``package_delivered``), so a crash never leaves a package without its transcripts'
receipts or the other way round.

A recall is asked for (``request_recall``: the admin API, ``hocba-hub recall``, the console;
a reason is mandatory, the request audited) and carried out by the running hub's delivery
worker for that destination (``recalls_due`` → the adapter's ``recall`` → ``recall_done``), so
a recall asked while the destination is down is sent when it is back, like any delivery. Once
recalled, each transcript it carried shows ``recalled`` at that destination, with the reason, and
the destination no longer counts as holding its content: the school's correction (or the same
content sent again) goes as the next version, in a new package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.store.model import StateConflict, bind_list, now_iso

# A package's states.
SUBMITTED = "submitted"
RECALL_REQUESTED = "recall_requested"
RECALLED = "recalled"
RECALL_REFUSED = "recall_refused"
# A transcript's delivery state at a destination once its package is recalled.
RECALLED_DELIVERY = "recalled"


@dataclass(frozen=True)
class PackageRow:
    """One package as the ledger keeps it."""
    package_id: str
    destination: str
    school_code: str
    class_name: str
    school_year: str
    members: tuple[tuple[str, int], ...]  # (record id, version) of each transcript it carried
    state: str
    receipt: dict[str, Any] | None
    reason: str | None          # why it was recalled
    requested_by: str | None    # who asked for the recall
    last_error: str | None      # why the destination refused the recall
    submitted_at: str
    updated_at: str

    @classmethod
    def from_db(cls, r: Any) -> "PackageRow":
        return cls(r["package_id"], r["destination"], r["school_code"], r["class_name"], r["school_year"],
                   tuple((str(m[0]), int(m[1])) for m in json.loads(r["members"])), r["state"],
                   json.loads(r["receipt"]) if r["receipt"] else None, r["reason"], r["requested_by"],
                   r["last_error"], r["submitted_at"], r["updated_at"])

    def public(self) -> dict[str, Any]:
        """What the admin API and the console show."""
        return {"package_id": self.package_id, "destination": self.destination, "school_code": self.school_code,
                "class_name": self.class_name, "school_year": self.school_year, "state": self.state,
                "transcripts": [{"record_id": r, "version": v} for r, v in self.members],
                "receipt_id": (self.receipt or {}).get("receipt_id"), "reason": self.reason,
                "requested_by": self.requested_by, "last_error": self.last_error,
                "submitted_at": self.submitted_at, "updated_at": self.updated_at}


class PackageLedger:
    """The store's package methods, mixed into ``hub.store.base.Store`` (plain SQL with named
    binds, the same on both backends). Uses the store's ``_write``, ``_lock``, ``_db``,
    ``_audit``, ``_class_name_sql``, ``_history_as_is`` and ``_delivery_done``.
    """

    def class_in_signing(self, school_code: str, school_year: str, class_name: str, states: Sequence[str]) -> int:
        """How many versions of the class are still in ``states`` (not yet through the signing
        chain): its package waits for them."""
        marks, wanted = bind_list("state", list(states))
        with self._lock:
            return self._db.execute(
                f"SELECT COUNT(*) FROM records WHERE school_code = :school AND school_year = :year"
                f" AND {self._class_name_sql()} = :class_name AND state IN ({marks})",
                {**wanted, "school": school_code, "year": school_year, "class_name": class_name}).fetchone()[0]

    def classes_of(self, pks: Sequence[int]) -> dict[int, tuple[str, str, str, str]]:
        """For each record ``pk``: its event and class (school, school year, class name), read
        without its documents, so a class that still waits costs no PDF or XML read."""
        if not pks:
            return {}
        marks, ids = bind_list("pk", list(pks))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, event, school_code, school_year, {self._class_name_sql()} AS class_name FROM records"
                f" WHERE id IN ({marks})", ids).fetchall()
        return {r["id"]: (r["event"], r["school_code"] or "", r["school_year"] or "", str(r["class_name"] or ""))
                for r in rows}

    def postpone(self, pks: Sequence[int], destination: str, due_at: str) -> None:
        """Give claimed jobs back, due again at ``due_at`` (their class is not complete yet)."""
        def work(db: Any) -> None:
            for pk in pks:
                db.execute("UPDATE outbox SET due_at = :due, lease_owner = NULL, lease_until = NULL"
                           " WHERE record = :pk AND destination = :destination",
                           {"due": due_at, "pk": pk, "destination": destination})
        self._write(work)

    def package_delivered(self, destination: str, facts: dict[str, str], receipt: dict[str, Any],
                          members: Sequence[tuple[int, str, dict[str, Any]]]) -> list[str | None]:
        """``destination`` accepted the package ``facts`` describes (``package_id``,
        ``school_code``, ``class_name``, ``school_year``): the package and each member's outcome
        — ``(record pk, the state it was claimed in, its receipt)``, as ``delivery_done`` — in
        one transaction. Returns each member's new state (None: it did not move)."""
        now = now_iso()

        def work(db: Any) -> list[str | None]:
            keys = [db.execute("SELECT record_id, version FROM records WHERE id = :pk", {"pk": pk}).fetchone()
                    for pk, _, _ in members]
            db.execute("INSERT INTO packages (package_id, destination, school_code, class_name, school_year,"
                       " members, state, receipt, submitted_at, updated_at) VALUES (:package_id, :destination,"
                       " :school_code, :class_name, :school_year, :members, :state, :receipt, :now, :now)"
                       " ON CONFLICT (destination, package_id) DO NOTHING",
                       {"package_id": facts["package_id"], "destination": destination,
                        "school_code": facts["school_code"], "class_name": facts["class_name"],
                        "school_year": facts["school_year"],
                        "members": json.dumps([[k["record_id"], k["version"]] for k in keys]), "state": SUBMITTED,
                        "receipt": json.dumps(receipt, ensure_ascii=False), "now": now})
            self._audit(db, "package", "hub", facts["package_id"],
                        {"destination": destination, "receipt_id": receipt.get("receipt_id"),
                         "transcripts": len(members)})
            return [self._delivery_done(db, pk, destination, expected, rec, now)
                    for pk, expected, rec in members]
        return self._write(work)

    def packages(self, *, destination: str | None = None, school: str | None = None,
                 package_id: str | None = None, limit: int = 500) -> list[PackageRow]:
        """Packages, newest first (filtered by destination, school or id)."""
        args, where = self._filters(("destination", destination), ("school_code", school),
                                    ("package_id", package_id))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM packages{clause} ORDER BY submitted_at DESC, package_id"
                                    f" LIMIT :limit", {**args, "limit": limit}).fetchall()
        return [PackageRow.from_db(r) for r in rows]

    def request_recall(self, package_id: str, reason: str, actor: str) -> list[PackageRow]:
        """Ask for ``package_id`` to be recalled from every destination holding it: audited,
        carried out by the running hub. ``KeyError`` if no destination holds such a package;
        ``StateConflict`` if it is already recalled or asked for."""
        now = now_iso()

        def work(db: Any) -> list[PackageRow]:
            rows = db.execute("SELECT * FROM packages WHERE package_id = :package_id",
                              {"package_id": package_id}).fetchall()
            if not rows:
                raise KeyError(package_id)
            open_ = [r for r in rows if r["state"] in (SUBMITTED, RECALL_REFUSED)]
            if not open_:
                raise StateConflict(f"package {package_id} is already {rows[0]['state'].replace('_', ' ')}")
            for r in open_:
                db.execute("UPDATE packages SET state = :state, reason = :reason, requested_by = :actor,"
                           " last_error = NULL, updated_at = :now WHERE destination = :destination"
                           " AND package_id = :package_id",
                           {"state": RECALL_REQUESTED, "reason": reason, "actor": actor, "now": now,
                            "destination": r["destination"], "package_id": package_id})
                self._audit(db, "recall_request", actor, package_id,
                            {"destination": r["destination"], "reason": reason})
            return [PackageRow.from_db(r) for r in
                    db.execute("SELECT * FROM packages WHERE package_id = :package_id",
                               {"package_id": package_id}).fetchall()]
        return self._write(work)

    def recalls_due(self, destinations: str | Sequence[str]) -> list[PackageRow]:
        """The recalls asked for and not yet sent to ``destinations`` (one name or several)."""
        names = [destinations] if isinstance(destinations, str) else list(destinations)
        if not names:
            return []
        marks, asked = bind_list("destination", names)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM packages WHERE destination IN ({marks}) AND state = :state"
                                    " ORDER BY updated_at", {**asked, "state": RECALL_REQUESTED}).fetchall()
        return [PackageRow.from_db(r) for r in rows]

    def recall_done(self, package_id: str, destination: str, receipt: dict[str, Any]) -> PackageRow:
        """``destination`` recalled the package: it, and each transcript it carried there, say so
        (the reason in every transcript's history); the destination no longer holds their content."""
        now = now_iso()
        package = {"destination": destination, "package_id": package_id, "now": now}

        def work(db: Any) -> PackageRow:
            row = PackageRow.from_db(db.execute("SELECT * FROM packages WHERE destination = :destination"
                                                " AND package_id = :package_id", package).fetchone())
            db.execute("UPDATE packages SET state = :state, receipt = :receipt, updated_at = :now"
                       " WHERE destination = :destination AND package_id = :package_id",
                       {**package, "state": RECALLED,
                        "receipt": json.dumps({**(row.receipt or {}), "recall": receipt}, ensure_ascii=False)})
            detail = f"recalled from {destination} with package {package_id}: {row.reason}"
            for record_id, version in row.members:
                member = {**package, "rid": record_id, "version": version}
                found = db.execute("SELECT id FROM records WHERE record_id = :rid AND version = :version",
                                   member).fetchone()
                if found is not None:
                    db.execute("UPDATE deliveries SET state = :state, last_error = :reason, updated_at = :now"
                               " WHERE record = :pk AND destination = :destination",
                               {**member, "state": RECALLED_DELIVERY, "reason": row.reason, "pk": found["id"]})
                    self._history_as_is(db, found["id"], detail, now)
                # Its content is no longer held there: the same content sent again is not "unchanged".
                db.execute("UPDATE sent_to SET content_hash = NULL WHERE record_id = :rid"
                           " AND destination = :destination AND version = :version", member)
            self._audit(db, "recall", row.requested_by or "hub", package_id,
                        {"destination": destination, "reason": row.reason, "receipt": receipt})
            return row
        return self._write(work)

    def recall_refused(self, package_id: str, destination: str, error: str) -> None:
        """The destination refused the recall for good: shown with the reason; it may be asked again."""
        now = now_iso()

        def work(db: Any) -> None:
            db.execute("UPDATE packages SET state = :state, last_error = :error, updated_at = :now"
                       " WHERE destination = :destination AND package_id = :package_id",
                       {"state": RECALL_REFUSED, "error": error, "now": now, "destination": destination,
                        "package_id": package_id})
            self._audit(db, "recall_refused", "hub", package_id,
                        {"destination": destination, "error": error})
        self._write(work)
