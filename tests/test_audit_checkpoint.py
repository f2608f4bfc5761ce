"""The audit log's head anchored outside the store: each checkpoint signed by the Department and
timestamped by a TSA, and ``audit verify`` checking the signatures, the timestamps and that the
chain still holds every checkpointed entry. Real keys (the test PKI), a real RFC 3161 TSA on
loopback (``hub.kit.tsa``), the real ``hocba-hub`` command."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from hub import store as st
from hub.cli import main
from hub.contracts import PluginContext, SigningIdentity
from hub.documents.checkpoint import read_anchors, sign_checkpoint
from hub.documents.verify import trust_roots_der
from hub.kit import pki
from hub.kit.synthetic import department_identity
from hub.kit.tsa import TrustServices
from hub.store.audit import Anchor, check_anchors, verify_chain
from signers.pkcs12.signer import Pkcs12Signer
from tests.conftest import PASSWORD

DEPT = department_identity("01")
SEAL = SigningIdentity("school_seal", "Trường Tiểu học Thử", "01001001")


@pytest.fixture
async def services(tmp_path):
    """A PKI holding the Department's key and a school's, and a TSA under the same root."""
    directory = tmp_path / "pki"
    pki.ensure_pki(directory, [DEPT, SEAL], PASSWORD)
    trust = TrustServices(directory)
    await trust.start()
    yield directory, trust
    await trust.stop()


def keys(directory: Path) -> Pkcs12Signer:
    return Pkcs12Signer(Pkcs12Signer.Settings(directory=directory, password=PASSWORD), PluginContext("keys", directory))


def logged(n: int) -> st.Store:
    store = st.Store(":memory:")
    for i in range(n):
        store.audit("replay", "op", f"r{i}", {"n": i})
    return store


async def checkpoint_line(store, directory, *, url="", identity=DEPT, at=None) -> str:
    signer = keys(directory)
    await signer.open()
    try:
        return await sign_checkpoint(verify_chain(store.audit_entries()), signer, identity, timestamp_url=url, at=at)
    finally:
        await signer.close()


def roots(directory: Path) -> tuple[bytes, ...]:
    return trust_roots_der((str(directory / pki.ROOT_CERT),))


def resigned_xml(line: str, change) -> str:
    fields = json.loads(line)
    xml = change(base64.b64decode(fields["checkpoint"]))
    return json.dumps({**fields, "checkpoint": base64.b64encode(xml).decode()})


async def test_a_signed_timestamped_checkpoint_verifies_and_anchors_the_chain(services):
    directory, trust = services
    store = logged(5)
    line = await checkpoint_line(store, directory, url=trust.tsa_url)
    assert trust.counters.timestamps == 1
    read = await read_anchors([line], roots(directory), department_code="01", require_timestamp=True)
    assert read.problems == () and read.signers == (DEPT.name,)
    assert read.anchors == (Anchor("anchor line 1", 5, verify_chain(store.audit_entries()).head,
                                   json.loads(line)["at"]),)
    assert read.last_timestamp is not None
    # Without trust anchors the signatures' integrity is still checked (trust is not).
    assert (await read_anchors([line])).anchors == read.anchors
    store.audit("replay", "op", "r5", {})          # the log goes on after the checkpoint
    assert check_anchors(verify_chain(store.audit_entries()), read.anchors) == []
    store._write(lambda db: db.execute("DELETE FROM audit WHERE id >= 4"))   # the newest cut off
    cut = verify_chain(store.audit_entries())
    assert cut.ok                                   # the chain alone cannot see it
    [problem] = check_anchors(cut, read.anchors)
    assert "entry 5 " in problem and "truncated" in problem


async def test_a_checkpoint_anyone_could_have_written_is_refused(services):
    """Unsigned, edited, signed by someone else, untrusted, or with another signature's token:
    each named, and none vouches for the chain."""
    directory, trust = services
    store = logged(3)
    line = await checkpoint_line(store, directory, url=trust.tsa_url)

    async def problems(lines, trusted=roots(directory)):
        read = await read_anchors(lines, trusted, department_code="01")
        assert read.anchors == () or read.problems == ()
        return " | ".join(read.problems)

    plain = json.dumps({"id": 3, "hash": "0" * 64, "at": "2026-01-01T00:00:00"})
    assert "anchor line 1: not a signed checkpoint" in await problems([plain])
    edited = json.dumps({**json.loads(line), "id": 2})
    assert "plain fields differ from its signed checkpoint" in await problems([edited])
    forged = resigned_xml(line, lambda xml: xml.replace(b"<LastEntry>3<", b"<LastEntry>2<"))
    assert "the signature does not verify" in await problems([forged])
    seal = await checkpoint_line(store, directory, identity=SEAL)
    assert "anchor line 1: the certificate of Trường Tiểu học Thử is not the organisation certificate of " \
           "Department 01" in await problems([seal])
    other = directory.parent / "other-pki"
    pki.create_root(other)
    assert "does not chain to a trust anchor" in await problems([line], roots(other))
    # The token of another checkpoint moved onto this one.
    second = await checkpoint_line(logged(4), directory, url=trust.tsa_url)

    def token(xml: bytes) -> bytes:
        return xml.split(b"EncapsulatedTimeStamp>")[1].rsplit(b"</", 1)[0]

    first_xml = base64.b64decode(json.loads(line)["checkpoint"])
    swapped = resigned_xml(line, lambda xml: xml.replace(
        token(xml), token(base64.b64decode(json.loads(second)["checkpoint"]))))
    assert token(first_xml) != token(base64.b64decode(json.loads(swapped)["checkpoint"]))
    assert "does not cover" in await problems([swapped])


async def test_a_hub_clock_set_back_is_seen_by_the_timestamp(services):
    directory, trust = services
    store = logged(2)
    line = await checkpoint_line(store, directory, url=trust.tsa_url,
                                 at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=2))
    read = await read_anchors([line], roots(directory), department_code="01")
    assert any("the hub's clock was wrong" in p for p in read.problems)
    unstamped = await checkpoint_line(store, directory)
    read = await read_anchors([unstamped], roots(directory), department_code="01", require_timestamp=True)
    assert [p for p in read.problems if "not timestamped" in p]


def config_file(tmp_path: Path, directory: Path, *, tsa: str = "", department: bool = True) -> Path:
    data = {
        "data_dir": str(tmp_path / "data"),
        "adapters": [{"name": "a", "type": "vnpt", "settings": {"base_url": "http://127.0.0.1:9", "client_id": "c",
                                                                "client_secret": "s"}}],
        "destination": {"name": "central", "type": "moet", "settings": {"base_url": "http://127.0.0.1:9",
                                                                        "token": "t"}},
        "signers": [{"name": "k", "type": "pkcs12", "settings": {"directory": str(directory), "password": PASSWORD}}],
        "signing": {"steps": [{"role": "school_seal", "signer": "k"}], "timestamp_url": tsa,
                    "trust": [str(directory / pki.ROOT_CERT)]},
    }
    if department:
        data["department"] = {"code": "01", "name": DEPT.name, "signer": "k"}
    path = tmp_path / f"hub-{'d' if department else 'n'}.yaml"
    path.write_text(json.dumps(data), "utf-8")
    return path


async def test_audit_checkpoint_and_verify_on_the_command_line(services, tmp_path, capsys):
    directory, trust = services
    config = config_file(tmp_path, directory, tsa=trust.tsa_url)

    async def cli(*args, config=config):
        # In a thread: the command runs its own event loop, the TSA answers on this one.
        code = await asyncio.to_thread(main, ["audit", *args, "--config", str(config)])
        out = capsys.readouterr()
        return code, out.out, out.err

    store = st.open_store(tmp_path / "data" / "hub.sqlite3")
    for n in range(3):
        store.audit("replay", "op", f"r{n}", {})
    anchor = tmp_path / "elsewhere" / "anchor.jsonl"
    anchor.parent.mkdir()
    code, out, err = await cli("checkpoint", "--anchor", str(anchor))
    assert code == 0, err
    assert "signed by the Department and timestamped" in out and trust.counters.timestamps == 1
    code, out, err = await cli("verify", "--anchor", str(anchor))
    assert code == 0 and "1 signed checkpoint(s) by " + DEPT.name in out and "last timestamped" in out, err
    # Without the Department configured there is nobody to sign: refused, nothing appended.
    code, _, err = await cli("checkpoint", "--anchor", str(anchor),
                             config=config_file(tmp_path, directory, department=False))
    assert code == 1 and "department: not configured" in err
    assert len(anchor.read_text().splitlines()) == 1
    # A line anyone could append is no checkpoint; a cut end is seen against the signed one.
    with anchor.open("a") as out_file:
        out_file.write(json.dumps({"id": 2, "hash": "f" * 64, "at": "2026-01-01T00:00:00"}) + "\n")
    store._write(lambda db: db.execute("DELETE FROM audit WHERE id = 3"))
    store.close()
    code, out, _ = await cli("verify")
    assert code == 0   # the chain alone cannot see a cut end
    code, out, err = await cli("verify", "--anchor", str(anchor))
    assert code == 1 and "TAMPERED" in out
    assert "anchor line 1: entry 3 " in err and "truncated" in err
    assert "anchor line 2: not a signed checkpoint" in err
