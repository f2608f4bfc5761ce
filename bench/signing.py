"""Signing speed: the hub's signer against pyHanko used the obvious way, and remote against local.

    python bench/signing.py [--documents N] [--records M] [--latency S]

Everything runs on this machine in one run, each comparison with the same inputs:

1. **signer**: ``N`` rendered transcripts get their homeroom teacher's signature (PAdES B-B, a
   visible stamp naming the signer in Vietnamese, its font embedded).
   - *obvious*: ``SimpleSigner.load_pkcs12`` once, then ``PdfSigner(...).sign_pdf`` per document with
     a ``TextStampStyle`` whose font is the same Noto Sans file (``GlyphAccumulatorFactory``) —
     pyHanko's documented way to embed a font — sequentially.
   - *hub*: the ``pkcs12`` signer (``hub.signing.LocalKeySigner``) on one worker thread, the
     documents submitted at once as the pipeline does. One core each, so the figure is
     per-core efficiency, not parallelism.
   ``signer_ratio`` = hub signatures/s ÷ obvious signatures/s (target ≥ 5).
2. **remote**: ``M`` transcripts through the whole hub (vnpt simulator → store → render → three
   signatures → ttdlqg simulator), once with local key files and once with the three signatures
   made by the ``csc`` signer against the CSC simulator answering every call after ``S``
   seconds (300 ms by default). The simulator runs in a child process, as a remote service
   would: its CPU is not the hub's. ``remote_ratio`` = remote transcripts/s ÷ local
   transcripts/s, both timed from ``hub.start()`` to the last delivery (target ≥ 0.8:
   concurrency and batching hide the latency).

The last two lines are ``signer_ratio: N`` and ``remote_ratio: N``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Runnable as ``python bench/signing.py`` from a checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.ttdlqg.simulator import TtdlqgSimulator  # noqa: E402
from adapters.vnpt.simulator import VnptSimulator  # noqa: E402
from hub import lifecycle as lc  # noqa: E402
from hub.config import parse_config  # noqa: E402
from hub.contracts import PluginContext  # noqa: E402
from hub.documents.render import FONT_FILE, ROLE_LABELS, render_pdf  # noqa: E402
from hub.documents.signing import identity_for, request_for  # noqa: E402
from hub.documents.verify import load_certs, verify_pdf  # noqa: E402
from hub.engine.pipeline import Hub  # noqa: E402
from hub.kit.pki import ensure_pki  # noqa: E402
from hub.kit.synthetic import signing_identities, transcript  # noqa: E402
from hub.logs import configure  # noqa: E402
from hub.records import parse_transcript  # noqa: E402
from signers.pkcs12.signer import Pkcs12Signer  # noqa: E402

PASSWORD = "bench-only-password"
ROLES = ("homeroom_teacher", "principal", "school_seal")
SEED = 5


def records(count: int) -> list[Any]:
    out = []
    for i in range(count):
        data = transcript(i, SEED)
        data.update(record_id=f"B{i:05d}", event="NEW", version=1, updated_at="2025-06-01T08:00:00")
        out.append(parse_transcript(data))
    return out


# --- 1. one signature, two ways --------------------------------------------------------------

def obvious(pdfs: list[bytes], recs: list[Any], pki_dir: Path, *, embedded_font: bool = True
            ) -> tuple[float, list[bytes]]:
    """pyHanko the way its documentation shows it: a loaded SimpleSigner, sign_pdf per document.

    ``embedded_font=False`` keeps pyHanko's default stamp font (Courier, not embedded, no
    Vietnamese): not a valid transcript, measured only to show where the time goes.
    """
    from pyhanko.pdf_utils.font.opentype import GlyphAccumulatorFactory
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.text import TextBoxStyle
    from pyhanko.sign import fields, signers
    from pyhanko.stamp import TextStampStyle

    box = TextBoxStyle(font=GlyphAccumulatorFactory(str(FONT_FILE)), font_size=8, leading=11) \
        if embedded_font else TextBoxStyle(font_size=8, leading=11)
    style = TextStampStyle(stamp_text="Ký bởi: %(signer)s\nVai trò: %(role)s\nThời gian: %(ts)s",
                           text_box_style=box, timestamp_format="%d/%m/%Y %H:%M:%S %z", border_width=1)
    loaded: dict[str, Any] = {}
    out = []
    start = time.perf_counter()
    for pdf, rec in zip(pdfs, recs):
        identity = identity_for(rec, "homeroom_teacher")
        signer = loaded.get(identity.key)
        if signer is None:  # loaded once per key: the generous reading of "obvious"
            signer = loaded[identity.key] = signers.SimpleSigner.load_pkcs12(
                str(pki_dir / f"{identity.key}.p12"), passphrase=PASSWORD.encode())
        meta = signers.PdfSignatureMetadata(field_name="homeroom_teacher", md_algorithm="sha256",
                                            subfilter=fields.SigSeedSubFilter.PADES)
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
        signed = signers.PdfSigner(meta, signer, stamp_style=style).sign_pdf(
            writer, existing_fields_only=True,
            appearance_text_params={"signer": identity.name, "role": ROLE_LABELS["homeroom_teacher"]})
        out.append(signed.getvalue())
    return time.perf_counter() - start, out


async def hub_signer(pdfs: list[bytes], recs: list[Any], pki_dir: Path) -> tuple[float, list[bytes]]:
    with ThreadPoolExecutor(1) as one_core:
        signer = Pkcs12Signer(Pkcs12Signer.Settings(directory=pki_dir, password=PASSWORD),
                              PluginContext("bench", pki_dir, one_core))
        await signer.open()  # loading keys is start-up, as for the obvious loop's first load
        start = time.perf_counter()
        signed = await asyncio.gather(*(signer.sign([request_for(r, pdf, "homeroom_teacher")])
                                        for r, pdf in zip(recs, pdfs)))
        return time.perf_counter() - start, [s[0] for s in signed]


# --- 2. the whole hub, local keys and remote signing -----------------------------------------

class CscService:
    """The CSC simulator in a child process, so its work does not share the hub's event loop."""

    def __init__(self, pki_dir: Path, latency: float):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "signers.csc.simulator", "--pki", str(pki_dir), "--password", PASSWORD,
             "--latency", str(latency), "--max-batch", "100", "--preload"],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the CSC simulator did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def pipeline(count: int, signer: dict[str, Any], pki_dir: Path, root: Path, work: Path) -> tuple[float, int]:
    vendor = VnptSimulator(records=count, seed=SEED)
    central = TtdlqgSimulator()
    await vendor.start()
    await central.start()
    config = parse_config({
        "data_dir": str(work),
        "delivery": {"max_attempts": 3, "backoff_initial": 0.05, "backoff_max": 0.5},
        "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 3600,
                      "settings": vendor.adapter_settings()}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": central.adapter_settings()},
        "signers": [{"name": "signer", **signer}],
        "signing": {"steps": [{"role": r, "signer": "signer"} for r in ROLES], "trust": [str(root)]},
    })
    try:
        start = time.perf_counter()
        hub = Hub(config)
        await hub.start()
        try:
            await asyncio.wait_for(hub.wait_idle(), 300 + 2 * count)
            elapsed = time.perf_counter() - start
            delivered = hub.store.counts().get(lc.DELIVERED, 0)
        finally:
            await hub.stop()
        return elapsed, delivered
    finally:
        await vendor.stop()
        await central.stop()


async def main_async(args: argparse.Namespace) -> int:
    configure("console", "error")
    with tempfile.TemporaryDirectory(prefix="hocba-bench-signing-") as tmp:
        work = Path(tmp)
        pki_dir = work / "pki"
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        root = await asyncio.to_thread(ensure_pki, pki_dir, signing_identities(), PASSWORD)
        roots = load_certs(root)

        recs = records(args.documents)
        pdfs = [render_pdf(r) for r in recs]
        # Rates are compared, so the slow baseline signs fewer documents.
        few = max(2, min(args.documents, args.obvious_documents))
        await asyncio.to_thread(obvious, pdfs[:2], recs[:2], pki_dir)  # warm both paths: imports, font parsing caches
        await hub_signer(pdfs[:2], recs[:2], pki_dir)
        base_time, base_out = await asyncio.to_thread(obvious, pdfs[:few], recs[:few], pki_dir)
        bare_time, _ = await asyncio.to_thread(obvious, pdfs[:few], recs[:few], pki_dir, embedded_font=False)
        hub_time, hub_out = await hub_signer(pdfs, recs, pki_dir)
        for pdf in (base_out[0], hub_out[0], hub_out[-1]):
            report = await verify_pdf(pdf, roots)
            if not report.ok:
                print(f"a signature did not validate: {report}", file=sys.stderr)
                return 1
        base_rate, bare_rate, hub_rate = few / base_time, few / bare_time, args.documents / hub_time
        print("signer: one signature per document, one core each")
        print(f"  pyHanko SimpleSigner + sign_pdf, obvious, Noto Sans embedded ({few} docs): "
              f"{base_rate:7.1f} signatures/s")
        print(f"  the same with pyHanko's default stamp font, not embedded, no Vietnamese: "
              f"{bare_rate:7.1f} signatures/s (not a valid transcript; for reference)")
        print(f"  hub pkcs12 signer, Noto Sans subset embedded ({args.documents} docs):        "
              f"{hub_rate:7.1f} signatures/s")
        print(f"  hub against the font-less baseline: {hub_rate / bare_rate:.1f}x")

        local_time, local_n = await pipeline(
            args.records, {"type": "pkcs12", "settings": {"directory": str(pki_dir), "password": PASSWORD}},
            pki_dir, root, work / "local")
        service = CscService(pki_dir, args.latency)
        try:
            remote_time, remote_n = await pipeline(
                args.records, {"type": "csc", "settings": {
                    "base_url": service.url, "client_id": "demo-csc-client", "client_secret": "demo-csc-secret",
                    "batch_size": 100, "batch_window": args.window}},
                pki_dir, root, work / "remote")
        finally:
            service.stop()
        if local_n != args.records or remote_n != args.records:
            print(f"not every transcript was delivered: local {local_n}, remote {remote_n} of {args.records}",
                  file=sys.stderr)
            return 1
        local_rate, remote_rate = args.records / local_time, args.records / remote_time
        print(f"pipeline: {args.records} transcripts, 3 signatures each, start-up included")
        print(f"  local key files:                          {local_rate:7.2f} transcripts/s")
        print(f"  csc, {args.latency * 1000:.0f} ms per call, batch window {args.window:g} s:"
              f"   {remote_rate:7.2f} transcripts/s")
        print(f"signer_ratio: {hub_rate / base_rate:.1f}")
        print(f"remote_ratio: {remote_rate / local_rate:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=60, help="signatures for the signer comparison")
    parser.add_argument("--obvious-documents", type=int, default=8,
                        help="documents for the (slow) obvious baseline")
    parser.add_argument("--records", type=int, default=200, help="transcripts for the pipeline comparison")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the CSC simulator takes per call")
    parser.add_argument("--window", type=float, default=0.5, help="csc batch window, seconds")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
