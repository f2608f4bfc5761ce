"""The SQLite store: payload first, versions, guarded transitions, resume after a restart."""

import json
import sqlite3

import pytest

from hub import store as st
from hub.contracts import RawRecord


def raw(source_id, body=None, deleted=False):
    return RawRecord(source_id, json.dumps(body or {"id": source_id}).encode(), deleted=deleted)


def test_payload_and_cursor_commit_together(tmp_path):
    s = st.Store(tmp_path / "hub.sqlite3")
    ids = s.receive("vendor-a", [raw("1"), raw("2")], "cursor-1", save_cursor=True)
    s.close()
    # A second connection (another process, after a crash) sees both the records and the cursor.
    db = sqlite3.connect(tmp_path / "hub.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 2
    assert db.execute("SELECT cursor FROM cursors").fetchone()[0] == "cursor-1"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(ids) == 2


def test_failed_page_commits_nothing(tmp_path):
    s = st.Store(tmp_path / "hub.sqlite3")

    def records():
        yield raw("1")
        raise RuntimeError("connection dropped mid-page")

    with pytest.raises(RuntimeError):
        s.receive("vendor-a", records(), "cursor-2", save_cursor=True)
    assert s.counts() == {}
    assert s.cursor("vendor-a") is None


def test_unchanged_reread_is_not_a_new_version_changed_is_update_deleted_is_cancel(tmp_path):
    s = st.Store(tmp_path / "hub.sqlite3")
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
    assert rows[first].state == rows[second].state == st.SUPERSEDED
    assert rows[third].state == st.RECEIVED


def test_transition_checks_the_state_it_leaves(tmp_path):
    s = st.Store(tmp_path / "hub.sqlite3")
    [pk] = s.receive("a", [raw("1")])
    s.advance(pk, st.RECEIVED, st.NORMALIZED, normalized={"x": 1}, school_code="01001001")
    with pytest.raises(st.StateConflict):
        s.advance(pk, st.RECEIVED, st.NORMALIZED)
    row = s.get(pk)
    assert row.state == st.NORMALIZED and row.normalized == {"x": 1} and row.school_code == "01001001"
    assert [h["state"] for h in s.history(pk)] == [st.RECEIVED, st.NORMALIZED]
    with pytest.raises(ValueError):
        s.advance(pk, st.NORMALIZED, st.RENDERED, colour="red")


def test_restart_finds_every_unfinished_record_at_its_state(tmp_path):
    path = tmp_path / "hub.sqlite3"
    s = st.Store(path)
    a, b, c, d = s.receive("a", [raw(str(i)) for i in range(4)])
    s.advance(b, st.RECEIVED, st.NORMALIZED)
    s.advance(c, st.RECEIVED, st.QUARANTINED, errors=["student.personal_id: bad"])
    s.advance(d, st.RECEIVED, st.NORMALIZED)
    s.advance(d, st.NORMALIZED, st.RENDERED, pdf=b"%PDF-")
    s.advance(d, st.RENDERED, "signed:homeroom_teacher", pdf=b"%PDF-1")
    s.close()
    again = st.Store(path)
    assert again.pending() == [(a, st.RECEIVED), (b, st.NORMALIZED), (d, "signed:homeroom_teacher")]
    assert again.get(c).errors == ["student.personal_id: bad"]
    assert again.get(d).pdf == b"%PDF-1"
