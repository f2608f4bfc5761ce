"""Two repairs to the libraries under the signatures, for speed; what they produce is unchanged.

Measured on one transcript's three PAdES signatures and its final check (``bench/pipeline.py``'s
bare loop, 2-core machine): a signature 20.7 → 11.6 ms of CPU, the PDF's validation 44 → 33 ms.
Both replace library internals, so the versions are bounded in ``pyproject.toml`` and
``tests/test_speedups.py`` checks each against the library's own function.

1. **asn1crypto re-encodes a built structure every time it is read.** A ``Sequence``,
   ``SequenceOf``, ``Set`` or ``SetOf`` made in code (pyHanko's signed attributes, signer info, ESS certificate ids)
   keeps its "mutated" flag for ever, so every ``.contents`` and ``.dump()`` of it and of each
   parent serialises the whole subtree again, and rebuilds each field's default value to compare
   with (wbond/asn1crypto#256). After re-encoding, the flag is cleared: the encoding now matches
   the children. A later change still shows, because setting a field flags that object and
   ``_is_mutated`` looks at every child.
2. **pyHanko reads a hex string one byte at a time** through a generator (a signature's
   ``/Contents`` is tens of thousands of hex digits, read again by every later signature and by
   validation). Here the string is found with one ``find`` and decoded with ``unhexlify``; any
   string that is not plain hex digits and white space (a comment, a bad byte, no closing ``>``)
   is handed to pyHanko's own reader, so its errors stay exactly as they were.
"""

from __future__ import annotations

import binascii
from typing import Any

import asn1crypto.core as asn1_core
from pyhanko.pdf_utils import generic as pdf_generic
from pyhanko.pdf_utils.misc import PDF_WHITESPACE

_CHUNK = 1 << 16


def _clears_mutated(set_contents: Any) -> Any:
    def _set_contents(self: Any, force: bool = False) -> None:
        set_contents(self, force)
        self._mutated = False
    _set_contents.__wrapped__ = set_contents  # type: ignore[attr-defined]
    return _set_contents


def _read_hex_string(stream: Any) -> Any:
    start = stream.tell()
    stream.read(1)  # the opening "<"
    parts: list[bytes] = []
    position = start + 1
    while True:
        chunk = stream.read(_CHUNK)
        end = chunk.find(b">")
        if end >= 0:
            parts.append(chunk[:end])
            stream.seek(position + end + 1)
            break
        if not chunk:  # no closing ">": pyHanko says how the stream ended
            return _library_read(stream, start)
        parts.append(chunk)
        position += len(chunk)
    digits = b"".join(parts).translate(None, PDF_WHITESPACE)
    if digits.translate(None, pdf_generic.HEX_DIGITS):  # anything else: pyHanko's reader and its errors
        return _library_read(stream, start)
    if len(digits) % 2:
        digits += b"0"  # as the PDF specification says of an odd final digit
    return pdf_generic.pdf_string(binascii.unhexlify(digits))


def _library_read(stream: Any, start: int) -> Any:
    stream.seek(start)
    return _read_hex_string.__wrapped__(stream)  # type: ignore[attr-defined]


def install() -> None:
    """Apply both repairs (once; calling again changes nothing)."""
    # Each class that encodes its own children (Set and SetOf sort them for DER).
    for cls in (asn1_core.Sequence, asn1_core.SequenceOf, asn1_core.Set, asn1_core.SetOf):
        if "__wrapped__" not in vars(cls)["_set_contents"].__dict__:
            cls._set_contents = _clears_mutated(cls._set_contents)
    if pdf_generic.read_hex_string_from_stream is not _read_hex_string:
        _read_hex_string.__wrapped__ = pdf_generic.read_hex_string_from_stream  # type: ignore[attr-defined]
        pdf_generic.read_hex_string_from_stream = _read_hex_string
