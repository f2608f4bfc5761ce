"""The store's contract, run against both backends: SQLite (one hub process) and PostgreSQL
(several workers on one database).

Every case takes ``open_store``: each call opens another connection to the same store, as
another hub process (or the same one after a restart) would. PostgreSQL cases run on a fresh
database each and skip, saying why, when no server is reachable (``tests/pgtest.py``).
"""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from pgtest import scratch_database

from hub import lifecycle as lc
from hub import store as st
from hub.contracts import RawRecord
from hub.store import migrations
from hub.store.audit import verify_chain
from hub.store.model import now_iso


def raw(source_id, body=None, deleted=False):
    return RawRecord(source_id, json.dumps(body or {"id": source_id}).encode(), deleted=deleted)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request.param


@pytest.fixture
def location(backend, tmp_path):
    if backend == "sqlite":
        yield str(tmp_path / "hub.sqlite3")
    else:
        with scratch_database() as url:
            yield url


@pytest.fixture
def open_store(location):
    opened: list[st.Store] = []

    def factory() -> st.Store:
        store = st.open_store(location)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        try:
            store.close()
        except Exception:
            pass


def advance_to_signed(s, pk, last="signed:school_seal"):
    s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"x": pk}, content_hash=f"h{pk}")
    s.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=b"%PDF-")
    s.advance(pk, lc.RENDERED, last, pdf=b"%PDF-signed", due=True)


# --- intake, versions, transitions (the cases tests/test_store.py started with) -----------------

def test_open_store_picks_the_backend(open_store, backend):
    s = open_store()
    assert s.dialect == backend and s.shared == (backend == "postgresql")
    assert s.schema_version() == migrations.LATEST
    assert s.describe().startswith(backend)


def test_store_opens_the_sibling_its_location_names(location, backend):
    from hub.store.postgres import PostgresStore
    from hub.store.sqlite import SQLiteStore

    s = st.Store(location)
    try:
        assert isinstance(s, st.Store)
        assert type(s) is (PostgresStore if backend == "postgresql" else SQLiteStore)
    finally:
        s.close()


def test_a_question_mark_or_percent_in_a_literal_is_sql_as_written(open_store):
    """Shared statements bind by name: a ``?`` or ``%`` in the SQL text is never taken for a
    placeholder, on either backend."""
    s = open_store()
    row = s._write(lambda db: db.execute("SELECT '50% ?' AS literal, :value AS bound", {"value": "a?%"}).fetchone())
    assert (row["literal"], row["bound"]) == ("50% ?", "a?%")


def test_payload_and_cursor_commit_together(open_store):
    s = open_store()
    ids = s.receive("vendor-a", [raw("1"), raw("2")], "cursor-1", save_cursor=True)
    s.close()
    again = open_store()  # another connection (another process, after a crash) sees both
    assert again.counts() == {lc.RECEIVED: 2} and len(ids) == 2
    assert again.cursor("vendor-a") == "cursor-1"
    assert [again.get(pk).payload for pk in ids] == [b'{"id": "1"}', b'{"id": "2"}']


def test_failed_page_commits_nothing(open_store):
    s = open_store()

    def records():
        yield raw("1")
        raise RuntimeError("connection dropped mid-page")

    with pytest.raises(RuntimeError):
        s.receive("vendor-a", records(), "cursor-2", save_cursor=True)
    assert s.counts() == {}
    assert s.cursor("vendor-a") is None


@pytest.mark.parametrize("bad", ["hs\x00-7", "hs-\x07", "hs\u200b-7", "\ufeffhs-7", "hs-\x9c", "x" * 5000])
def test_an_id_no_store_keeps_alike_still_commits_its_page_and_is_named(open_store, bad):
    """The issue's case: a pulled record whose ``source_id`` holds NUL made PostgreSQL refuse the
    whole page, every poll (the cursor never moved, nothing after it was read). Both backends
    now keep the page: the id as ``storable_id`` says (the normalise stage refuses it), the
    history naming the field and the character."""
    s = open_store()
    ids = s.receive("vendor-a", [raw("good"), raw(bad)], "cursor-1", save_cursor=True)
    assert len(ids) == 2 and s.cursor("vendor-a") == "cursor-1"
    stored = s.get(ids[1])
    assert stored.record_id == st.record_id_for("vendor-a", bad)  # the vendor's id, as sent, keys it
    assert "\x00" not in stored.source_id and len(stored.source_id) <= 201
    assert "\ufffd" in stored.source_id
    [received] = s.history(ids[1])
    assert "source_id: " in received["detail"]
    if len(bad) < 100:
        assert "U+" in received["detail"] and "hs" not in received["detail"]  # the character, not the id
    assert s.receive("vendor-a", [raw("good"), raw(bad)], "cursor-2", save_cursor=True) == []  # re-read
    assert s.history(ids[0])[0]["detail"] == "version 1 NEW"


def test_a_cursor_with_nul_is_refused_by_name_and_commits_nothing(open_store):
    s = open_store()
    with pytest.raises(ValueError, match="cursor contains a NUL"):
        s.receive("vendor-a", [raw("1")], "page\x002", save_cursor=True)
    assert s.counts() == {} and s.cursor("vendor-a") is None


def test_unchanged_reread_is_not_a_new_version_changed_is_update_deleted_is_cancel(open_store):
    s = open_store()
    [first] = s.receive("a", [raw("1", {"v": 1})])
    assert s.receive("a", [raw("1", {"v": 1})]) == []
    [second] = s.receive("a", [raw("1", {"v": 2})])
    [third] = s.receive("a", [raw("1", {"v": 2}, deleted=True)])
    rows = {r.id: r for r in s.rows()}
    assert (rows[first].version, rows[first].event) == (1, "NEW")
    assert (rows[second].version, rows[second].event) == (2, "UPDATE")
    assert (rows[third].version, rows[third].event) == (3, "CANCEL")
    assert rows[first].record_id == rows[third].record_id == st.record_id_for("a", "1")
    # Older versions still on their way are superseded: a stale version is never sent.
    assert rows[first].state == rows[second].state == lc.SUPERSEDED
    assert rows[third].state == lc.RECEIVED


def test_a_payload_the_vendor_dates_before_the_latest_version_is_not_a_new_version(open_store):
    import datetime as dt

    s = open_store()
    tz = dt.timezone(dt.timedelta(hours=7))
    newer = RawRecord("1", b'{"v": 2}', updated_at=dt.datetime(2025, 6, 2, 8, 0, tzinfo=tz))
    older = RawRecord("1", b'{"v": 1}', updated_at=dt.datetime(2025, 6, 1, 8, 0, tzinfo=tz))
    assert len(s.receive("a", [newer])) == 1
    assert s.receive("a", [older]) == []  # a delayed retry of an old page changes nothing
    assert [(r.version, r.payload) for r in s.rows()] == [(1, b'{"v": 2}')]


def test_transition_checks_the_state_it_leaves(open_store):
    s = open_store()
    [pk] = s.receive("a", [raw("1")])
    s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"x": 1}, school_code="01001001")
    with pytest.raises(st.StateConflict):
        s.advance(pk, lc.RECEIVED, lc.NORMALIZED)
    row = s.get(pk)
    assert row.state == lc.NORMALIZED and row.normalized == {"x": 1} and row.school_code == "01001001"
    assert [h["state"] for h in s.history(pk)] == [lc.RECEIVED, lc.NORMALIZED]
    with pytest.raises(ValueError):
        s.advance(pk, lc.NORMALIZED, lc.RENDERED, colour="red")
    with pytest.raises(KeyError):
        s.get(pk + 1000)


def test_changes_committed_together_each_check_the_state_they_leave(open_store):
    s = open_store()
    a, b, c = s.receive("a", [raw("1"), raw("2"), raw("3")])
    s.advance(b, lc.RECEIVED, lc.NORMALIZED)  # moved on elsewhere: the batch's change conflicts
    outcome = s.advance_many([
        ((a, lc.RECEIVED, lc.NORMALIZED), {"normalized": {"x": 1}, "school_code": "S1"}),
        ((b, lc.RECEIVED, lc.NORMALIZED), {"normalized": {"x": 2}}),
        ((c, lc.RECEIVED, lc.NORMALIZED), {"colour": "red"}),
        ((c, lc.RECEIVED, lc.QUARANTINED), {"errors": ["f: bad"]}),
    ])
    assert outcome[0] is None and outcome[3] is None
    assert isinstance(outcome[1], st.StateConflict) and isinstance(outcome[2], ValueError)
    assert s.get(a).state == lc.NORMALIZED and s.get(a).normalized == {"x": 1}
    assert s.get(b).state == lc.NORMALIZED and s.get(b).normalized is None  # left as it was
    assert s.get(c).state == lc.QUARANTINED and s.get(c).errors == ["f: bad"]
    assert [h["state"] for h in s.history(b)] == [lc.RECEIVED, lc.NORMALIZED]


def test_restart_finds_every_unfinished_record_at_its_state(open_store):
    s = open_store()
    a, b, c, d = s.receive("a", [raw(str(i)) for i in range(4)])
    s.advance(b, lc.RECEIVED, lc.NORMALIZED)
    s.advance(c, lc.RECEIVED, lc.QUARANTINED, errors=["student.personal_id: bad"])
    s.advance(d, lc.RECEIVED, lc.NORMALIZED)
    s.advance(d, lc.NORMALIZED, lc.RENDERED, pdf=b"%PDF-")
    s.advance(d, lc.RENDERED, "signed:homeroom_teacher", pdf=b"%PDF-1")
    s.close()
    again = open_store()
    assert again.pending() == [(a, lc.RECEIVED), (b, lc.NORMALIZED), (d, "signed:homeroom_teacher")]
    assert again.get(c).errors == ["student.personal_id: bad"]
    assert again.get(d).pdf == b"%PDF-1"


def test_queries_search_select_breakdown(open_store):
    s = open_store()
    ids = s.receive("a", [raw(str(i)) for i in range(3)]) + s.receive("b", [raw("x")])
    s.advance(ids[0], lc.RECEIVED, lc.QUARANTINED, errors=["f: bad"], school_code="S1")
    assert s.select(adapter="a") == ids[:3]
    assert s.select(ids=[ids[1]], record_ids=[st.record_id_for("b", "x")]) == [ids[1], ids[3]]
    assert s.select(state=lc.QUARANTINED, school="S1") == [ids[0]]
    with pytest.raises(ValueError):
        s.select()
    found = s.search(state=lc.QUARANTINED)
    assert [f["id"] for f in found] == [ids[0]] and found[0]["errors"] == ["f: bad"]
    assert "payload" not in found[0]
    assert len(s.search(limit=2)) == 2 and len(s.search(limit=10, offset=3)) == 1
    assert {(r["adapter"], r["state"], r["n"]) for r in s.breakdown()} == {
        ("a", lc.QUARANTINED, 1), ("a", lc.RECEIVED, 2), ("b", lc.RECEIVED, 1)}
    s.set_paused("a", True, "ops")
    assert s.paused() == {"a"}
    s.set_paused("a", False, "ops")
    assert s.paused() == set()
    s.ping()


def test_counts_by_school_and_class(open_store):
    """The console's table: the class comes from the normalised record, on either backend."""
    s = open_store()
    ids = s.receive("a", [raw(str(i)) for i in range(4)])
    for pk, school, klass in ((ids[0], "S1", "6A"), (ids[1], "S1", "6A"), (ids[2], "S2", "7B")):
        s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"class_name": klass}, school_code=school)
    s.advance(ids[3], lc.RECEIVED, lc.QUARANTINED, errors=["f: bad"], school_code="S1")
    counts = {(r["school_code"], r["class_name"], r["state"], r["n"]) for r in s.class_breakdown()}
    assert counts == {("S1", "6A", lc.NORMALIZED, 2), ("S2", "7B", lc.NORMALIZED, 1),
                      ("S1", None, lc.QUARANTINED, 1)}
    assert {(r["class_name"], r["n"]) for r in s.class_breakdown("S2")} == {("7B", 1)}
    assert s.schools() == ["S1", "S2"]


# --- leases ------------------------------------------------------------------------------------

def test_claims_are_exclusive_and_a_state_change_or_release_ends_them(open_store):
    one, two = open_store(), open_store()
    ids = one.receive("a", [raw(str(i)) for i in range(5)])
    mine = one.claim([lc.RECEIVED], "w1", 60, 3)
    theirs = two.claim([lc.RECEIVED], "w2", 60, 10)
    assert mine == ids[:3] and theirs == ids[3:]
    assert two.claim([lc.RECEIVED], "w2", 60, 10) == []
    one.advance(mine[0], lc.RECEIVED, lc.NORMALIZED)  # the next stage claims it afresh
    assert two.claim([lc.NORMALIZED], "w2", 60, 10) == [mine[0]]
    one.release([mine[1]], "w2")  # only the holder can give a lease back
    assert two.claim([lc.RECEIVED], "w2", 60, 10) == []
    one.release([mine[1]], "w1")
    assert two.claim([lc.RECEIVED], "w2", 60, 10) == [mine[1]]


def test_claim_rows_leases_like_claim_and_returns_the_records_as_stored(open_store):
    one, two = open_store(), open_store()
    ids = one.receive("a", [raw(str(i)) for i in range(4)])
    one.advance(ids[1], lc.RECEIVED, lc.NORMALIZED, normalized={"class_name": "6A"}, school_code="S1")
    rows = one.claim_rows([lc.RECEIVED, lc.NORMALIZED], "w1", 60, 3)
    assert [r.id for r in rows] == ids[:3]
    assert rows == [one.get(pk) for pk in ids[:3]]  # the same fields a read gives, payload included
    assert rows[1].normalized == {"class_name": "6A"} and rows[1].school_code == "S1"
    assert two.claim_rows([lc.RECEIVED, lc.NORMALIZED], "w2", 60, 10) == [one.get(ids[3])]
    assert two.claim([lc.RECEIVED, lc.NORMALIZED], "w2", 60, 10) == []


def test_a_lease_that_runs_out_is_claimed_again_and_renew_extends_it(open_store):
    one, two = open_store(), open_store()
    a, b = one.receive("a", [raw("1"), raw("2")])
    assert one.claim([lc.RECEIVED], "w1", -1, 10) == [a, b]  # leased, and already run out
    one.renew("w1", 60)  # the heartbeat came in time
    assert two.claim([lc.RECEIVED], "w2", 60, 10) == []
    one.renew("w1", -1)
    assert two.claim([lc.RECEIVED], "w2", 60, 10) == [a, b]


def test_concurrent_claimers_get_every_record_exactly_once(open_store):
    first = open_store()
    ids = first.receive("a", [raw(str(i)) for i in range(120)])
    stores = [first] + [open_store() for _ in range(3)]
    got: dict[str, list[int]] = {}

    def worker(name, s):
        got[name] = []
        while pks := s.claim([lc.RECEIVED], name, 60, 7):
            for pk in pks:
                s.advance(pk, lc.RECEIVED, lc.NORMALIZED)
            got[name].extend(pks)

    threads = [threading.Thread(target=worker, args=(f"w{i}", s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [pk for pks in got.values() for pk in pks]
    assert sorted(claimed) == ids  # none twice, none missed
    assert first.counts() == {lc.NORMALIZED: 120}


def test_deliveries_are_leased_once_and_retried_when_due(open_store):
    one, two = open_store(), open_store()
    a, b = one.receive("a", [raw("1"), raw("2")])
    for pk in (a, b):
        advance_to_signed(one, pk)
    assert one.outbox_size() == 2 and one.next_due() is not None
    assert one.claim_deliveries("w1", 60, 1) == [(a, "", 0)]
    assert two.claim_deliveries("w2", 60, 10) == [(b, "", 0)]
    assert one.claim_deliveries("w1", 60, 10) == []
    assert one.retry_later(a, "503", "9999-01-01T00:00:00.000+00:00") == 1
    two.release_delivery(b, "w2")
    assert one.claim_deliveries("w1", 60, 10) == [(b, "", 0)]  # a waits for its due time
    assert one.make_due(now_iso()) == 1  # the destination is back: what waits goes now
    assert two.claim_deliveries("w2", 60, 10) == [(a, "", 1)]
    assert one.get(a).errors == ["503"]
    one.advance(a, "signed:school_seal", lc.DELIVERED, receipt={"receipt_id": "R1"})
    assert one.outbox_size() == 1 and one.sent_version(st.record_id_for("a", "1")) == (1, f"h{a}")
    one.drop_delivery(b)
    assert one.outbox_size() == 0


def test_reissue_sends_the_payload_again_above_the_held_version(open_store):
    s = open_store()
    [pk] = s.receive("a", [raw("1")])
    advance_to_signed(s, pk)
    new = s.reissue(pk, "signed:school_seal", 4, "destination holds version 4")
    old, row = s.get(pk), s.get(new)
    assert old.state == lc.SUPERSEDED and (row.version, row.event, row.state) == (5, "UPDATE", lc.RECEIVED)
    assert row.payload == old.payload and s.sent_version(row.record_id) == (4, None)
    with pytest.raises(st.StateConflict):
        s.reissue(pk, "signed:school_seal", 4, "again")


def test_replay_moves_only_replayable_records(open_store):
    s = open_store()
    q, d = s.receive("a", [raw("1"), raw("2")])
    s.advance(q, lc.RECEIVED, lc.QUARANTINED, errors=["x: bad"])
    advance_to_signed(s, d)
    s.advance(d, "signed:school_seal", lc.DEAD_LETTER, errors=["refused"])
    assert s.replay([q, d], actor="ops", stage="normalize") == [(q, lc.RECEIVED), (d, lc.RECEIVED)]
    s.advance(d, lc.RECEIVED, lc.DEAD_LETTER)
    assert s.replay([d], actor="ops", stage="deliver", deliver_from="signed:school_seal") == []  # no pdf now
    assert s.replay([q], actor="ops") == []  # not replayable any more
    assert [e["kind"] for e in s.audit_entries()].count("replay") == 2


# --- pull leases (adapter cursors) ---------------------------------------------------------------

def test_one_worker_at_a_time_pulls_an_adapter(open_store):
    one, two = open_store(), open_store()
    assert one.claim_pull("vendor", "w1", 60)
    assert one.claim_pull("vendor", "w1", 60)  # holding it renews it
    assert not two.claim_pull("vendor", "w2", 60)
    assert two.claim_pull("other", "w2", 60)  # per adapter
    assert one.pull_owner("vendor") == "w1"
    one.release_pull("vendor", "w2")  # not theirs to give back
    assert not two.claim_pull("vendor", "w2", 60)
    one.release_pull("vendor", "w1")
    assert two.claim_pull("vendor", "w2", 60)


def test_a_worker_that_lost_the_pull_lease_commits_nothing(open_store):
    one, two = open_store(), open_store()
    assert one.claim_pull("vendor", "w1", -1)  # taken, and already run out
    assert two.claim_pull("vendor", "w2", 60)
    with pytest.raises(st.LeaseLost):
        one.receive("vendor", [raw("1")], "old-cursor", save_cursor=True, lease_owner="w1")
    assert one.counts() == {} and one.cursor("vendor") is None
    assert two.receive("vendor", [raw("1")], "new-cursor", save_cursor=True, lease_owner="w2")
    assert one.cursor("vendor") == "new-cursor"


# --- several writers ---------------------------------------------------------------------------

def test_audit_chain_never_forks_under_concurrent_appends(open_store):
    stores = [open_store() for _ in range(4)]
    ids = stores[0].receive("a", [raw(str(i)) for i in range(20)])

    def worker(i, s):
        for n in range(10):
            s.audit("admin.test", f"worker-{i}", None, {"n": n})
        for pk in ids[i::4]:  # receipts are appended inside state transitions
            advance_to_signed(s, pk)
            s.advance(pk, "signed:school_seal", lc.DELIVERED, receipt={"receipt_id": f"R{pk}"})

    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_chain(stores[0].audit_entries())
    assert report.ok, report.problems
    assert report.entries == 40 + 20


def test_two_writers_receiving_the_same_record_make_one_version_per_change(open_store):
    stores = [open_store() for _ in range(3)]
    errors = []

    def worker(s):
        try:
            for v in range(15):  # all three push the same changes, in the same order
                s.receive("push", [raw(str(i), {"v": v}) for i in range(6)])
        except Exception as exc:  # a duplicate version would raise a unique violation here
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = stores[0].rows()
    for i in range(6):
        versions = sorted(r.version for r in rows if r.source_id == str(i))
        assert versions == list(range(1, len(versions) + 1))  # no gaps, no duplicates
        latest = [r for r in rows if r.source_id == str(i) and r.state == lc.RECEIVED]
        assert len(latest) == 1 and latest[0].payload == b'{"v": 14}'


# --- retention -------------------------------------------------------------------------------

def test_prune_keeps_what_is_still_needed_and_its_space_is_reused(open_store):
    s = open_store()
    pdf = bytes(range(256)) * 1024  # 256 kB of incompressible-looking data per record

    def batch(prefix, n=24):
        ids = s.receive("a", [raw(f"{prefix}{i}", {"pad": "x" * 2000, "i": i}) for i in range(n)])
        for pk in ids:
            advance_to_signed(s, pk)
            s.advance(pk, "signed:school_seal", lc.RENDERED, pdf=pdf)  # a big product to prune
            s.advance(pk, lc.RENDERED, lc.DELIVERED, receipt={"receipt_id": f"R{pk}"})
        return ids

    [waiting] = s.receive("a", [raw("waiting")])
    [bad] = s.receive("a", [raw("bad")])
    s.advance(bad, lc.RECEIVED, lc.QUARANTINED, errors=["x: bad"])
    first = batch("one-")
    full = s.storage_bytes()
    result = s.prune("9999-01-01T00:00:00")
    assert result["records"] == len(first)
    for pk in first:
        row = s.get(pk)
        assert row.payload == b"" and row.pdf is None and row.normalized is None and row.receipt
    assert s.get(waiting).payload and s.get(bad).payload  # never pruned
    assert s.prune("9999-01-01T00:00:00")["records"] == 0  # once
    assert verify_chain(s.audit_entries()).ok
    # The freed space is handed back (SQLite) or reused (PostgreSQL): storing as much again
    # does not double the store, as it would if pruning freed nothing.
    batch("two-")
    assert s.storage_bytes() < full * 1.5, (full, s.storage_bytes())


# --- migrations ------------------------------------------------------------------------------

def test_migrations_run_once_and_a_newer_schema_is_refused(open_store, backend):
    s = open_store()
    assert s.schema_version() == migrations.LATEST
    again = open_store()  # a second worker (or a restart) applies nothing
    with again._lock:
        applied = [r[0] for r in again._db.execute("SELECT version FROM schema_version ORDER BY version")]
    assert applied == [step.version for step in migrations.STEPS]
    s._write(lambda db: db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (:v, :name, :at)",
                                   {"v": migrations.LATEST + 1, "name": "from the future", "at": "2099-01-01"}))
    with pytest.raises(migrations.SchemaTooNew):
        open_store()


def test_a_step_numbered_below_an_applied_one_still_runs(open_store, monkeypatch):
    """Steps written on parallel branches reach a store in either order: a store already at a
    higher step gets a lower one it never recorded, once."""
    def step(version, table):
        return migrations.Step(version, f"creates {table}", sqlite=(f"CREATE TABLE {table} (x INTEGER)",),
                               postgresql=(f"CREATE TABLE {table} (x INTEGER)",))

    real = migrations.STEPS
    high, low = step(migrations.LATEST + 2, "high_step"), step(migrations.LATEST + 1, "low_step")
    monkeypatch.setattr(migrations, "STEPS", (*real, high))
    monkeypatch.setattr(migrations, "LATEST", high.version)
    open_store().close()  # this store has the higher step, not the lower one
    monkeypatch.setattr(migrations, "STEPS", (*real, low, high))
    again = open_store()
    with again._lock:
        applied = [r[0] for r in again._db.execute("SELECT version FROM schema_version ORDER BY version")]
        again._db.execute("SELECT COUNT(*) FROM low_step").fetchone()
    assert applied == [step.version for step in migrations.STEPS]
    open_store()  # and only once (a second CREATE TABLE would fail)


def test_a_push_nonce_is_spent_once_across_connections(open_store):
    import time

    a, b = open_store(), open_store()  # two workers, or one before and after a restart
    until = time.time() + 300
    assert a.spend_nonce("push-a", "sig-1", until)
    assert not b.spend_nonce("push-a", "sig-1", until)
    assert not a.spend_nonce("push-a", "sig-1", until)
    assert b.spend_nonce("push-b", "sig-1", until)  # per adapter
    a.close()
    assert not open_store().spend_nonce("push-a", "sig-1", until)
    # Past its time a nonce is dropped (the adapter's own freshness check refuses it by then).
    b._write(lambda db: db.execute("UPDATE push_nonces SET until = :until WHERE nonce = :nonce",
                                   {"until": int(time.time()) - 5, "nonce": "sig-1"}))
    assert b.spend_nonce("push-a", "sig-1", until)


def test_concurrent_workers_spend_a_nonce_exactly_once(open_store):
    import time

    stores = [open_store() for _ in range(4)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def spend(store):
        barrier.wait()
        results.append(store.spend_nonce("push", "same", time.time() + 60))

    threads = [threading.Thread(target=spend, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]


OLD_SQLITE_SCHEMA = """
CREATE TABLE records (id INTEGER PRIMARY KEY, record_id TEXT NOT NULL, version INTEGER NOT NULL,
  event TEXT NOT NULL, adapter TEXT NOT NULL, source_id TEXT NOT NULL, source_updated TEXT,
  content_type TEXT NOT NULL, payload BLOB NOT NULL, payload_hash TEXT NOT NULL, state TEXT NOT NULL,
  school_code TEXT, school_year TEXT, normalized TEXT, pdf BLOB, errors TEXT, receipt TEXT, content_hash TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, received_at TEXT NOT NULL, updated_at TEXT NOT NULL, pruned_at TEXT,
  lease_owner TEXT, lease_until TEXT, UNIQUE (record_id, version));
CREATE TABLE history (id INTEGER PRIMARY KEY, record INTEGER NOT NULL REFERENCES records (id), at TEXT NOT NULL,
  state TEXT NOT NULL, detail TEXT);
CREATE TABLE cursors (adapter TEXT PRIMARY KEY, cursor TEXT, updated_at TEXT NOT NULL);
CREATE TABLE outbox (record INTEGER PRIMARY KEY REFERENCES records (id), due_at TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, lease_owner TEXT, lease_until TEXT);
CREATE TABLE sent (record_id TEXT PRIMARY KEY, version INTEGER NOT NULL, content_hash TEXT, receipt TEXT,
  sent_at TEXT NOT NULL);
CREATE TABLE adapters (name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL,
  subject TEXT, detail TEXT, prev TEXT NOT NULL, hash TEXT NOT NULL);
INSERT INTO records (record_id, version, event, adapter, source_id, content_type, payload, payload_hash, state,
  received_at, updated_at) VALUES ('r1', 1, 'NEW', 'a', '1', 'application/json', x'7b7d', 'h', 'normalized',
  '2025-01-01', '2025-01-01');
"""


def test_a_sqlite_file_from_before_versioned_migrations_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SQLITE_SCHEMA)
    db.close()
    s = st.Store(path)
    assert s.schema_version() == migrations.LATEST
    assert s.pending() == [(1, lc.NORMALIZED)]  # the data is untouched
    assert s.claim_pull("a", "w1", 60)  # and the new tables are there
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- what differs between the backends, by design -----------------------------------------------

def test_sqlite_store_is_one_process_and_release_all_frees_a_dead_runs_leases(tmp_path):
    path = tmp_path / "hub.sqlite3"
    s = st.Store(path)
    assert not s.shared
    ids = s.receive("a", [raw("1"), raw("2")])
    assert s.claim([lc.RECEIVED], "killed-run", 60, 10) == ids
    assert s.claim_pull("a", "killed-run", 60)
    s.close()
    again = st.Store(path)  # the next start of the one hub process
    again.release_all()
    assert again.claim([lc.RECEIVED], "new-run", 60, 10) == ids
    assert again.claim_pull("a", "new-run", 60)


def test_postgres_worker_that_dies_frees_its_leases_at_once():
    with scratch_database() as url:
        dying, survivor = st.open_store(url), st.open_store(url)
        try:
            ids = dying.receive("a", [raw(str(i)) for i in range(3)])
            [a, b, c] = ids
            advance_to_signed(dying, c)
            assert dying.claim([lc.RECEIVED], "dying", 3600, 10) == [a, b]
            assert dying.claim_deliveries("dying", 3600, 10) == [(c, "", 0)]
            assert dying.claim_pull("vendor", "dying", 3600)
            assert survivor.claim([lc.RECEIVED], "survivor", 60, 10) == []
            assert "2 worker(s) connected" in survivor.describe()
            dying._conn.close()  # what PostgreSQL sees when a worker is killed: its session ends
            assert survivor.claim([lc.RECEIVED], "survivor", 60, 10) == [a, b]
            assert survivor.claim_deliveries("survivor", 60, 10) == [(c, "", 0)]
            assert survivor.claim_pull("vendor", "survivor", 60)
            assert "1 worker(s) connected" in survivor.describe()
            # The dead worker's store reconnects on its next call, as a new session.
            assert dying.claim([lc.RECEIVED], "dying", 60, 10) == []
        finally:
            dying.close()
            survivor.close()


def test_postgres_url_password_is_masked():
    from hub.store.postgres import mask_url

    assert mask_url("postgresql://hub:s3cret@db.example:5432/hocba") == "postgresql://hub:***@db.example:5432/hocba"
    assert mask_url("postgresql://hub@db/hocba") == "postgresql://hub@db/hocba"


def test_store_given_a_postgres_url_opens_postgres_not_a_file(tmp_path, monkeypatch):
    # ``Store(config.store_path)`` is how the CLI opens the configured store.
    with scratch_database() as url:
        monkeypatch.chdir(tmp_path)
        s = st.Store(url)
        try:
            assert s.dialect == "postgresql" and s.shared
        finally:
            s.close()
        assert list(tmp_path.iterdir()) == []  # no SQLite file (or directory) named after the URL


def test_postgres_deadlock_between_workers_is_retried_not_raised():
    # Two workers lock the same two rows in opposite orders: PostgreSQL aborts one of them
    # (deadlock detected); the store runs that transaction again, so both calls succeed.
    with scratch_database() as url:
        one, two = st.open_store(url), st.open_store(url)
        try:
            a, b = one.receive("a", [raw("1"), raw("2")])
            barrier = threading.Barrier(2)
            runs = {"one": 0, "two": 0}
            errors = []

            def cross(store, name, first, second):
                def work(db):
                    runs[name] += 1
                    db.execute("SELECT id FROM records WHERE id = :pk FOR UPDATE", {"pk": first})
                    if runs[name] == 1:
                        barrier.wait(timeout=10)
                    db.execute("UPDATE records SET attempts = attempts + 1 WHERE id = :pk", {"pk": second})
                try:
                    store._write(work)
                except Exception as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=cross, args=(one, "one", a, b)),
                       threading.Thread(target=cross, args=(two, "two", b, a))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            assert sorted(runs.values()) == [1, 2]  # one side was aborted once and ran again
            assert one.get(a).attempts == 1 and one.get(b).attempts == 1
        finally:
            one.close()
            two.close()


def test_identity_cache_remembers_until_expiry_and_blocked_records_are_not_pending(open_store):
    s = open_store()
    s.identity_remember([("k1", "verified"), ("k2", "verified")], "2025-01-01T00:00:00.000+00:00",
                        "2025-02-01T00:00:00.000+00:00")
    assert s.identity_known(["k1", "k2", "k3"], "2025-01-15T00:00:00.000+00:00") == {
        "k1": "verified", "k2": "verified"}
    assert s.identity_known(["k1"], "2025-02-01T00:00:00.000+00:00") == {}  # expired
    # Remembering again renews; expired entries go.
    s.identity_remember([("k1", "verified")], "2025-03-01T00:00:00.000+00:00", "2025-04-01T00:00:00.000+00:00")
    assert open_store().identity_known(["k1", "k2"], "2025-03-02T00:00:00.000+00:00") == {"k1": "verified"}

    [pk] = s.receive("a", [raw("x")])
    s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"x": 1})
    s.advance(pk, lc.NORMALIZED, lc.BLOCKED_IDENTITY, errors=["student.full_name: … / …"])
    assert s.pending() == []
    # Replayable, and a changed version supersedes it.
    assert s.replay([pk], stage="render", actor="t") == [(pk, lc.NORMALIZED)]
    s.advance(pk, lc.NORMALIZED, lc.BLOCKED_IDENTITY)
    [pk2] = s.receive("a", [raw("x", {"id": "x", "changed": True})])
    assert s.get(pk).state == lc.SUPERSEDED and s.get(pk2).version == 2


# --- issuance registry (migration 6) ---------------------------------------------------------------

def test_issuance_registry_records_each_copy_once_with_its_audit_entry(open_store):
    import hashlib

    from hub.store.audit import verify_chain
    from hub.store.issuance import new_code

    s = open_store()
    [pk] = s.receive("vendor", [raw("a")])
    code = new_code()
    s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"x": pk}, content_hash="h")
    s.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=b"%PDF-", xml=b"<x/>", verify_code=code)
    s.advance(pk, lc.RENDERED, "signed:school_seal", pdf=b"%PDF-signed", xml=b"<x s/>", due=True)
    s.advance(pk, "signed:school_seal", lc.DELIVERED, receipt={"receipt_id": "r"}, issued_to="central")
    entry = s.issue(pk, "pdf", actor="an.nguyen", recipient="Đại học", purpose="tuyển sinh")
    entries = s.issued(code=code)
    assert [(e.document, e.recipient, e.actor) for e in entries] == [
        ("pdf", "central", "hub"), ("xml", "central", "hub"), ("pdf", "Đại học", "an.nguyen")]
    assert entries[0].sha256 == entry.sha256 == hashlib.sha256(b"%PDF-signed").hexdigest()
    assert s.issued(record_id=entry.record_id) == entries
    held = s.by_code(code)
    assert (held["version"], held["state"], held["latest_version"]) == (1, lc.DELIVERED, 1)
    assert s.by_code(new_code()) is None
    # A recall is the newest version, a CANCEL.
    s.receive("vendor", [raw("a", deleted=True)])
    assert s.version_of(entry.record_id, 1)["latest_event"] == "CANCEL"
    kinds = [e["kind"] for e in s.audit_entries()]
    assert kinds.count("issue") == 3 and verify_chain(s.audit_entries()).ok
    with pytest.raises(ValueError, match="no XML"):
        [other] = s.receive("vendor", [raw("b")])
        s.issue(other, "xml", actor="x")


# --- routes: one job, one outcome and one held version per destination --------------------------

def signed_for(s, pk, destinations, last="signed:school_seal"):
    s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"x": pk}, content_hash=f"h{pk}")
    s.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=b"%PDF-")
    s.advance(pk, lc.RENDERED, last, pdf=b"%PDF-signed", due=destinations)


def test_a_record_is_delivered_once_every_destination_it_goes_to_holds_it(open_store):
    s = open_store()
    a, b, c = s.receive("a", [raw("1"), raw("2"), raw("3")])
    signed_for(s, a, ["ndc", "store"])
    signed_for(s, b, ["ndc"])
    signed_for(s, c, [])  # no route takes it: nothing to send
    assert s.get(c).state == lc.DELIVERED and "no route" in s.history(c)[-1]["detail"]
    assert s.outbox_size("ndc") == 2 and s.outbox_size("store") == 1
    assert s.claim_deliveries("w", 60, 10, "store") == [(a, "store", 0)]
    assert [j[:2] for j in s.claim_deliveries("w", 60, 10, "ndc")] == [(a, "ndc"), (b, "ndc")]
    assert s.delivery_done(a, "ndc", "signed:school_seal", {"receipt_id": "N1"}) is None  # store still to go
    assert s.get(a).state == "signed:school_seal"
    assert s.delivery_done(a, "store", "signed:school_seal", {"receipt_id": "S1"}) == lc.DELIVERED
    rid = st.record_id_for("a", "1")
    assert s.sent_versions(rid) == {"ndc": (1, f"h{a}"), "store": (1, f"h{a}")}
    assert {d["destination"]: (d["state"], d["receipt"]["receipt_id"]) for d in s.deliveries_of(a)} == {
        "ndc": ("delivered", "N1"), "store": ("delivered", "S1")}
    assert s.destination_counts() == {"ndc": {"delivered": 1, "queued": 1, "due": 1}, "store": {"delivered": 1}}


def test_one_destinations_dead_letter_is_replayed_to_it_alone(open_store):
    s = open_store()
    [a] = s.receive("a", [raw("1")])
    signed_for(s, a, ["ndc", "store"])
    assert s.retry_later(a, "503", now_iso(), destination="store") == 1
    assert s.delivery_given_up(a, "store", "signed:school_seal", "422 refused") is None
    # While ndc's job is still open, the store's dead letter can already be sent again.
    assert s.replay([a], stage="deliver", actor="ops", deliver_from="signed:school_seal",
                    destination="store") == [(a, "signed:school_seal")]
    assert s.delivery_given_up(a, "store", "signed:school_seal", "422 refused") is None
    assert s.delivery_done(a, "ndc", "signed:school_seal", {"receipt_id": "N1"}) == lc.DEAD_LETTER
    assert s.get(a).errors == ["store: 422 refused"]
    assert s.replay([a], stage="deliver", actor="ops", deliver_from="signed:school_seal",
                    destination="ndc") == []  # ndc holds it: nothing of it is dead
    assert s.replay([a], stage="deliver", actor="ops", deliver_from="signed:school_seal") == [
        (a, "signed:school_seal")]
    assert [j[:2] for j in s.claim_deliveries("w", 60, 10)] == [(a, "store")]  # never ndc twice
    assert s.delivery_done(a, "store", "signed:school_seal", {"receipt_id": "S1"}) == lc.DELIVERED
    assert [e["kind"] for e in s.audit_entries()].count("receipt") == 2


def test_a_version_accepted_while_superseded_keeps_its_receipt_per_destination(open_store):
    s = open_store()
    [a] = s.receive("a", [raw("1")])
    signed_for(s, a, ["ndc", "store"])
    s.claim_deliveries("w", 60, 10)
    s.receive("a", [raw("1", {"id": "1", "changed": True})])  # version 2 supersedes version 1
    assert s.get(a).state == lc.SUPERSEDED and s.outbox_size() == 0
    assert s.delivery_done(a, "ndc", "signed:school_seal", {"receipt_id": "N1"}) == lc.DELIVERED
    assert s.delivery_done(a, "store", "signed:school_seal", {"receipt_id": "S1"}) is None
    assert {d["destination"]: d["state"] for d in s.deliveries_of(a)} == {"ndc": "delivered", "store": "delivered"}
    assert s.sent_version(st.record_id_for("a", "1"), "store") == (1, f"h{a}")


def test_a_destination_holding_a_newer_version_settles_its_job_and_reissue_is_per_destination(open_store):
    s = open_store()
    [a] = s.receive("a", [raw("1")])
    signed_for(s, a, ["ndc", "store"])
    assert s.delivery_given_up(a, "ndc", "signed:school_seal", "holds version 3", superseded=True) is None
    new = s.reissue(a, "signed:school_seal", 3, "store holds version 3", destination="store")
    assert s.get(new).version == 4
    assert s.sent_versions(st.record_id_for("a", "1")) == {"store": (3, None)}
    assert {d["destination"]: d["state"] for d in s.deliveries_of(a)} == {"ndc": "superseded", "store": "superseded"}


def _store_at_step_6(location: str) -> None:
    """A store as the hub before routes left it: the schema of steps 1–6 (steps never change once
    shipped), a delivered record, a dead letter and two queued delivery jobs, one leased."""
    old = [step for step in migrations.STEPS if step.version <= 6]
    rows = [("r1", "delivered"), ("r2", "signed:school_seal"), ("r3", "signed:school_seal"), ("r4", "dead_letter")]
    if st.is_postgres_url(location):
        import psycopg

        from hub.store.postgres import _pyformat  # the store's own spelling of named binds

        conn = psycopg.connect(location, autocommit=True)
        run, dialect = (lambda sql, args=None: conn.execute(_pyformat(sql), args) if args else conn.execute(sql)), \
            "postgresql"
    else:
        conn = sqlite3.connect(location, isolation_level=None)
        run, dialect = conn.execute, "sqlite"
    run(migrations.VERSION_TABLE)
    for step in old:
        for statement in step.statements(dialect):
            run(statement)
        run("INSERT INTO schema_version (version, name, applied_at) VALUES (:v, :name, 'x')",
            {"v": step.version, "name": step.name})
    for pk, (rid, state) in enumerate(rows, start=1):
        run("INSERT INTO records (id, record_id, version, event, adapter, source_id, content_type, payload,"
            " payload_hash, state, received_at, updated_at, pdf, receipt, errors) VALUES (:pk, :rid, 1, 'NEW', 'a',"
            " :rid, 'application/json', :payload, 'h', :state, '2025-01-01', '2025-01-01', :pdf, :receipt, :errors)",
            {"pk": pk, "rid": rid, "payload": b"{}", "state": state, "pdf": b"%PDF-signed",
             "receipt": '{"receipt_id": "R1"}' if state == "delivered" else None,
             "errors": '["refused"]' if state == "dead_letter" else None})
        run("INSERT INTO history (record, at, state, detail) VALUES (:pk, '2025-01-01', 'signed:school_seal', NULL)",
            {"pk": pk})
    run("INSERT INTO outbox (record, due_at, attempts, last_error) VALUES (2, '2025-01-01', 3, '503')")
    run("INSERT INTO outbox (record, due_at, attempts, lease_owner, lease_until) VALUES"
        " (3, '2025-01-01', 0, 'dead-worker', :until)", {"until": "2025-01-01T00:00:00+00:00"})
    run("INSERT INTO sent (record_id, version, content_hash, receipt, sent_at) VALUES ('r1', 1, 'c1', NULL, 'x')")
    conn.close()


def test_a_store_from_before_routes_keeps_every_queued_job(location, open_store):
    _store_at_step_6(location)
    s = open_store()
    assert s.schema_version() == migrations.LATEST
    assert s.outbox_size() == 2  # nothing queued was lost
    assert s.adopt_routeless("ndc") == 2  # the hub's first route takes the old destination's jobs
    assert sorted(j[:3] for j in s.claim_deliveries("w", 60, 10, "ndc")) == [(2, "ndc", 3), (3, "ndc", 0)]
    assert s.sent_version("r1", "ndc") == (1, "c1")
    assert {r: [d["state"] for d in s.deliveries_of(r)] for r in (1, 2, 4)} == {
        1: ["delivered"], 2: ["queued"], 4: ["dead_letter"]}
    assert s.delivery_done(2, "ndc", "signed:school_seal", {"receipt_id": "R2"}) == lc.DELIVERED
    assert s.replay([4], stage="deliver", actor="ops", deliver_from="signed:school_seal") == [
        (4, "signed:school_seal")]
    assert s.outbox_size("ndc") == 2


def test_steps_are_applied_when_missing_whatever_their_order():
    later = [s.version for s in migrations.STEPS if s.version > 7]
    assert [s.version for s in migrations.pending({1, 2, 3, 4, 5, 6})] == [7, *later]
    assert [s.version for s in migrations.pending({1, 2, 3, 4, 5, 7, *later})] == [6]
    assert [s.version for s in migrations.pending(5)] == [6, 7, *later]
    with pytest.raises(migrations.SchemaTooNew):
        migrations.pending({1, 2, 99})


# --- the audit log's head, anchored outside the store: truncation is seen --------------------------

def test_truncating_the_audit_log_is_seen_against_an_anchor(open_store):
    # The anchors' signatures and timestamps: tests/test_audit_checkpoint.py.
    from hub.store.audit import Anchor, check_anchors

    s = open_store()
    for n in range(5):
        s.audit("replay", "op", f"r{n}", {"n": n})
    head = verify_chain(s.audit_entries())
    anchor = [Anchor("anchor line 1", head.last_id, head.head, now_iso())]
    s.audit("replay", "op", "r5", {"n": 5})        # the log goes on after the checkpoint
    report = verify_chain(s.audit_entries())
    assert report.ok and check_anchors(report, anchor) == []
    last = report.last_id
    # The newest entries removed: the chain itself still checks out, the anchor does not.
    s._write(lambda db: db.execute("DELETE FROM audit WHERE id >= :id", {"id": last - 1}))
    cut = verify_chain(s.audit_entries())
    assert cut.ok
    [problem] = check_anchors(cut, anchor)
    assert f"entry {last - 1} " in problem and "truncated" in problem
    s._write(lambda db: db.execute("DELETE FROM audit"))   # everything removed
    assert check_anchors(verify_chain(s.audit_entries()), anchor)


def test_a_package_and_its_transcripts_are_stored_together_and_a_recall_reaches_each(open_store):
    s = open_store()
    a, b, c = s.receive("a", [raw("1"), raw("2"), raw("3")])
    for pk in (a, b, c):
        s.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized={"class_name": "5A"}, content_hash=f"h{pk}",
                  school_code="01001001", school_year="2024-2025")
    in_signing = [lc.NORMALIZED, lc.RENDERED]
    assert s.class_in_signing("01001001", "2024-2025", "5A", in_signing) == 3
    for pk in (a, b):
        s.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=b"%PDF-")
        s.advance(pk, lc.RENDERED, "signed:school_seal", pdf=b"%PDF-signed", due=["store"])
    assert s.class_in_signing("01001001", "2024-2025", "5A", in_signing) == 1  # c: the class waits
    assert s.class_in_signing("01001001", "2024-2025", "5B", in_signing) == 0
    # Postponed jobs are not due until their time.
    s.postpone([a, b], "store", "2999-01-01T00:00:00+00:00")
    assert s.claim_deliveries("w", 60, 10, "store") == []
    s.postpone([a, b], "store", now_iso())
    assert {j[0] for j in s.claim_deliveries("w", 60, 10, "store")} == {a, b}
    facts = {"package_id": "GT-1", "school_code": "01001001", "class_name": "5A", "school_year": "2024-2025"}
    settled = s.package_delivered("store", facts, {"receipt_id": "P1"},
                                  [(a, "signed:school_seal", {"receipt_id": "T1", "package_id": "GT-1"}),
                                   (b, "signed:school_seal", {"receipt_id": "T2", "package_id": "GT-1"})])
    assert settled == [lc.DELIVERED, lc.DELIVERED]
    [package] = open_store().packages()  # another connection sees the package with its members
    rid_a, rid_b = st.record_id_for("a", "1"), st.record_id_for("a", "2")
    assert package.members == ((rid_a, 1), (rid_b, 1)) and package.state == "submitted"
    assert package.receipt == {"receipt_id": "P1"}
    assert [e["kind"] for e in s.audit_entries()].count("package") == 1
    # A recall: asked once (a second ask is refused), sent, then every member says so.
    with pytest.raises(KeyError):
        s.request_recall("GT-nope", "sai điểm", "op")
    [asked] = s.request_recall("GT-1", "sai điểm môn Toán", "op:an")
    assert asked.state == "recall_requested" and asked.requested_by == "op:an"
    with pytest.raises(st.StateConflict, match="already recall requested"):
        s.request_recall("GT-1", "sai điểm môn Toán", "op:an")
    assert [p.package_id for p in s.recalls_due(["store", "ndc"])] == ["GT-1"]
    assert s.recalls_due([]) == [] and s.recalls_due("ndc") == []
    s.recall_refused("GT-1", "store", "the store is closed for the year")
    assert s.packages()[0].state == "recall_refused" and s.recalls_due("store") == []
    s.request_recall("GT-1", "sai điểm môn Toán", "op:an")  # a refused recall may be asked again
    s.recall_done("GT-1", "store", {"receipt_id": "R1"})
    done = s.packages(package_id="GT-1")[0]
    assert done.state == "recalled" and done.receipt["recall"] == {"receipt_id": "R1"}
    for pk in (a, b):
        assert {d["destination"]: (d["state"], d["last_error"]) for d in s.deliveries_of(pk)} == {
            "store": ("recalled", "sai điểm môn Toán")}
        assert "recalled from store with package GT-1: sai điểm môn Toán" in s.history(pk)[-1]["detail"]
    # The store no longer holds the content: the same content sent again is not "unchanged".
    assert s.sent_versions(rid_a) == {"store": (1, None)}
    assert s.destination_counts()["store"]["recalled"] == 2
    assert verify_chain(s.audit_entries()).ok
