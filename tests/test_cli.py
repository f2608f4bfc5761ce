"""The command line as an operator runs it: demo, run + SIGTERM, normalize, verify."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path

import aiohttp
import pytest
import yaml

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub.documents.verify import extract_record
from hub.kit.pki import ensure_pki
from hub.kit.synthetic import signing_identities

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "adapters" / "vnpt" / "examples"
CLI = [sys.executable, "-m", "hub.cli"]


def cli(*args, cwd=None, check=False):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, check=check, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run (20 transcripts) shared by the tests that inspect its output."""
    work = tmp_path_factory.mktemp("demo")
    result = cli("demo", "--config", str(ROOT / "config" / "example.yaml"), "--records", "20",
                 "--out", "out", cwd=work)
    return work, result


def test_demo_delivers_every_valid_record_and_quarantines_the_rest(demo):
    work, result = demo
    assert result.returncode == 0, result.stdout + result.stderr
    pdfs = sorted((work / "out").glob("*.pdf"))
    assert len(pdfs) == 20
    assert (work / "out" / "root-ca.pem").exists()
    assert "demo OK" in result.stdout
    assert "quarantined  5" in result.stdout
    assert "arrived signed by their teachers in the school's software (misa-hanoi, push-hanoi)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    # The throwaway PKI lives in the data directory and is reused by the next run.
    assert (work / "hocba-data" / "pki" / "root-ca.pem").exists()


@pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 is not installed")
def test_demo_sends_class_packages_the_department_signed_and_writes_the_portal_sheets(demo):
    from openpyxl import load_workbook

    from hub import store as st
    from hub.documents.package import ClassPackage
    from tests.test_moet_packages import xmlsec

    work, result = demo
    out = work / "out"
    store = st.Store(work / "hocba-data" / "demo.sqlite3")
    try:
        delivered = store.rows(state="delivered")
        classes = {(r.school_code, r.school_year, r.normalized["class_name"]) for r in delivered}
    finally:
        store.close()
    assert len(delivered) == 20
    # The Ministry's store got each class as packages (one, or more when a transcript of the class
    # arrived from a slower source after the rest was sent); xmlsec1 verifies each Department
    # signature against the demo's root alone; together they carry every transcript exactly once.
    zips = sorted((out / "moet").glob("*.zip"))
    carried: list[tuple[str, int]] = []
    packaged = set()
    for path in zips:
        package = ClassPackage.from_zip(path.read_bytes())
        manifest = work / "manifest.xml"
        manifest.write_bytes(package.manifest)
        done = xmlsec(manifest, out / "root-ca.pem")
        assert done.returncode == 0 and "SignedInfo References (ok/all): 3/3" in done.stderr, done.stderr
        carried += [(e.record_id, e.version) for e in package.entries]
        packaged.add((package.school_code, package.school_year, package.class_name))
    assert sorted(carried) == sorted((r.record_id, r.version) for r in delivered)
    assert packaged == classes
    # The school portal's sheets, opened again with openpyxl: one workbook per class, one row per student.
    books = sorted((out / "portal-sheets").rglob("*.xlsx"))
    assert len(books) == len(classes)
    cells = [str(v) for book in books for row in load_workbook(book).active.iter_rows(values_only=True)
             for v in row if v is not None]
    for r in delivered:
        assert cells.count(r.normalized["student"]["full_name"]) >= 1, r.normalized["student"]["full_name"]
    assert "ttdlqg         holds 20 transcripts" in result.stdout


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils is not installed")
def test_demo_pdfs_read_as_vietnamese_and_carry_the_record(demo):
    work, _ = demo
    pdf = sorted((work / "out").glob("*.pdf"))[0]
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = unicodedata.normalize("NFC", text)
    record = yaml.safe_load(extract_record(pdf.read_bytes()))  # JSON is YAML
    assert record["hocsinh"]["hovaten"] in text
    assert record["tentruong"].upper() in text.upper()
    assert "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM" in text and "HỌC BẠ" in text


def test_verify_accepts_demo_pdfs_and_rejects_a_changed_byte(demo):
    work, _ = demo
    out = work / "out"
    pdfs = sorted(str(p) for p in out.glob("*.pdf"))
    xmls = sorted(str(p) for p in out.glob("*.xml"))
    assert len(xmls) == 20
    # The push and misa vendors deliver XML signed by the teachers with their own test PKI.
    vendor_roots = sorted(out.glob("vendor-*-root-ca.pem"))
    assert {p.name for p in vendor_roots} == {"vendor-misa-hanoi-root-ca.pem", "vendor-push-hanoi-root-ca.pem"}
    trust = [arg for root in (out / "root-ca.pem", *vendor_roots) for arg in ("--trust", str(root))]
    ok = cli("verify", *trust, *pdfs, *xmls)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("(PDF): HỢP LỆ / VALID") == 20
    assert ok.stdout.count("(XML): HỢP LỆ / VALID") == 20
    # Without the vendors' roots their teachers' signatures are not trusted, and it is said where.
    hub_only = cli("verify", "--trust", str(out / "root-ca.pem"), *xmls)
    assert hub_only.returncode == 1 and "GVCN: " in hub_only.stdout and "trust anchor" in hub_only.stdout
    # The same roots as named sets of a configuration.
    config = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    config["trust_anchors"] = {"demo": [str(out / "root-ca.pem")], "vendors": [str(p) for p in vendor_roots]}
    (work / "anchors.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    named = cli("verify", "--config", "anchors.yaml", "--anchors", "demo,vendors", *xmls, cwd=work)
    assert named.returncode == 0 and named.stdout.count("(XML): HỢP LỆ / VALID") == 20, named.stdout + named.stderr
    unknown = cli("verify", "--config", "anchors.yaml", "--anchors", "neac", xmls[0], cwd=work)
    assert unknown.returncode == 2 and "'neac' is not defined under trust_anchors" in unknown.stdout + unknown.stderr
    config["trust_anchors"]["vgca"] = [str(work / "missing-vgca.pem")]
    (work / "anchors.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    missing = cli("verify", "--config", "anchors.yaml", "--anchors", "demo", xmls[0], cwd=work)
    assert missing.returncode == 2 and "trust_anchors.vgca" in missing.stdout + missing.stderr
    data = bytearray(Path(pdfs[0]).read_bytes())
    data[len(data) // 3] ^= 0x01
    tampered = work / "tampered.pdf"
    tampered.write_bytes(bytes(data))
    bad = cli("verify", "--trust", str(out / "root-ca.pem"), str(tampered))
    assert bad.returncode == 1 and "INVALID" in bad.stdout
    # Without the demo's root the signatures are intact but not trusted: also a failure, said so.
    untrusted = cli("verify", pdfs[0], xmls[0])
    assert untrusted.returncode == 1 and untrusted.stdout.count("not checked against a trust anchor") == 2
    assert "Traceback" not in untrusted.stdout + untrusted.stderr


def test_normalize_prints_central_json_or_field_errors():
    good = cli("normalize", "--adapter", "vnpt", str(EXAMPLES / "record.json"))
    assert good.returncode == 0, good.stderr
    record = yaml.safe_load(good.stdout)
    assert record["sukien"] == "NEW" and record["hocsinh"]["hovaten"]
    assert unicodedata.is_normalized("NFC", good.stdout)
    bad = cli("normalize", "--adapter", "vnpt", str(EXAMPLES / "invalid.json"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("student.personal_id:")
    assert cli("normalize", "--adapter", "moet", str(EXAMPLES / "record.json")).returncode == 2


def test_schema_command_prints_the_central_format():
    out = cli("schema", check=True).stdout
    assert '"idbanghi"' in out and '"hovaten"' in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_run_serves_works_and_drains_on_sigterm(tmp_path):
    vendor, central = VnptSimulator(records=4, invalid=1), TtdlqgSimulator()
    await vendor.start()
    await central.start()
    pki = tmp_path / "pki"
    await asyncio.to_thread(ensure_pki, pki, signing_identities(), "pw-for-run")
    port = _free_port()
    config = yaml.safe_load((ROOT / "config" / "example.yaml").read_text(encoding="utf-8"))
    config["data_dir"] = str(tmp_path / "data")
    config["adapters"] = config["adapters"][:1]  # the vnpt source, served by the simulator above
    config["adapters"][0]["settings"].update(vendor.adapter_settings())
    config["routes"] = config["routes"][:1]  # the National Data Centre, served by the simulator above
    config["routes"][0]["settings"].update(central.adapter_settings())
    config["signers"][0]["settings"] = {"directory": str(pki), "password": "${RUN_TEST_KEY_PASSWORD}"}
    config["signing"]["trust"] = [str(pki / "root-ca.pem")]
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    log_file = tmp_path / "hub.log"  # a file, not a pipe nobody reads while the hub logs
    with log_file.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "run", "--config", str(path), "--bind", f"127.0.0.1:{port}",
            env={**os.environ, "RUN_TEST_KEY_PASSWORD": "pw-for-run"}, stdout=log, stderr=log,
        )
    try:
        for _ in range(600):
            if len(central.accepted()) == 4:
                break
            await asyncio.sleep(0.1)
        assert len(central.accepted()) == 4
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200, await resp.text()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0
        logs = log_file.read_text(encoding="utf-8")
        assert '"event": "hub.stopped"' in logs and "pw-for-run" not in logs
        assert '"state": "quarantined"' in logs
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await vendor.stop()
        await central.stop()


def test_broken_config_never_starts_the_server(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("adapters: []\n", encoding="utf-8")
    result = cli("run", "--config", str(path), "--bind", "127.0.0.1:1")
    assert result.returncode == 1 and "adapters:" in result.stderr


async def test_first_run_simulate_then_run_delivers_without_tracebacks(tmp_path):
    """The README's first run: `simulate` stands in for every system the example config names,
    `run` serves and delivers against them; neither prints a traceback."""
    text = (ROOT / "config" / "example.yaml").read_text(encoding="utf-8")
    for old in ("9100", "9101", "9102", "9103", "9104", "8080"):
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{_free_port()}")
    text = text.replace("hocba-data", str(tmp_path / "hocba-data"))
    config = tmp_path / "hub.yaml"
    config.write_text(text, encoding="utf-8")
    bind = yaml.safe_load(text)["http"]["bind"]
    sim_log, run_log = tmp_path / "simulate.log", tmp_path / "run.log"
    with sim_log.open("wb") as out:
        sim = await asyncio.create_subprocess_exec(*CLI, "simulate", "--config", str(config), "--records", "10",
                                                   "--invalid", "0", stdout=out, stderr=out, cwd=tmp_path)
    hub = None
    try:
        for _ in range(1800):   # the first run issues the test PKI: a key per teacher
            if "simulators running" in sim_log.read_text(encoding="utf-8"):
                break
            await asyncio.sleep(0.1)
        assert "simulators running" in sim_log.read_text(encoding="utf-8"), sim_log.read_text(encoding="utf-8")
        with run_log.open("wb") as out:
            hub = await asyncio.create_subprocess_exec(*CLI, "run", "--config", str(config), stdout=out, stderr=out,
                                                       cwd=tmp_path)
        delivered = 0
        async with aiohttp.ClientSession() as http:
            for _ in range(900):
                try:
                    async with http.get(f"http://{bind}/metrics") as resp:
                        body = await resp.text()
                    delivered = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                                    if line.startswith("hocba_records{") and 'state="delivered"' in line)
                except aiohttp.ClientError:
                    pass
                if delivered >= 10:
                    break
                await asyncio.sleep(0.1)
        assert delivered == 10, run_log.read_text(encoding="utf-8")[-3000:]
        assert '"event": "hub.listening"' in run_log.read_text(encoding="utf-8")
    finally:
        for proc in (hub, sim):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 60)
    for log in (sim_log, run_log):
        assert "Traceback" not in log.read_text(encoding="utf-8"), log.read_text(encoding="utf-8")[-3000:]


def test_demo_finds_the_example_config_from_any_folder(tmp_path, monkeypatch):
    from hub.kit.demo import default_config

    monkeypatch.chdir(tmp_path)   # no config/ here: the one beside the source tree is used
    assert default_config() == ROOT / "config" / "example.yaml" and default_config().exists()
