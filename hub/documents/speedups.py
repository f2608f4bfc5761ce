"""Four repairs to the libraries under the signatures, for speed; what they produce is unchanged.

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
3. **pyHanko reads a name one byte at a time** too (``/Type``, ``/Contents``…: the commonest token
   of every object, read again by each revision the final check's difference analysis walks).
   Here a name of plain printable characters (no ``#`` escape) is found with one regular
   expression over pyHanko's own white-space and delimiter sets; any other (an escape, a byte
   that must be escaped, a name longer than one read, the end of the stream) goes to pyHanko's
   reader. Measured on the final check of a three-signature transcript: about a tenth of the
   PDF's validation.
4. **asn1crypto prepares a name's strings for comparison (RFC 4518 string preparation, in pure
   Python) once per parsed certificate**, and validating a PDF parses the same few certificates
   again for each signature (its ESS signing-certificate check and path building compare names):
   another tenth of the PDF's validation. The preparation is a function of the string alone, so
   its results are kept (bounded) by string; a string it refuses raises every time, as before.
"""

from __future__ import annotations

import binascii
import functools
import re
from typing import Any

import asn1crypto.core as asn1_core
import asn1crypto.x509 as asn1_x509
from pyhanko.pdf_utils import generic as pdf_generic
from pyhanko.pdf_utils.misc import PDF_DELIMITERS, PDF_WHITESPACE

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


_NAME_READ = 128
_NAME_END = re.compile(b"[" + re.escape(PDF_WHITESPACE + PDF_DELIMITERS) + b"]")
_NAME_PLAIN = bytes(c for c in range(0x21, 0x7F) if c != 0x23)  # printable, "#" (escape) aside


def _read_name(stream: Any) -> Any:
    start = stream.tell()
    chunk = stream.read(_NAME_READ)
    end = _NAME_END.search(chunk, 1)
    if chunk[:1] == b"/" and end is not None:
        body = chunk[1:end.start()]
        if not body.translate(None, _NAME_PLAIN):
            stream.seek(start + end.start())
            return pdf_generic.NameObject("/" + body.decode("ascii"))
    stream.seek(start)  # anything else: pyHanko's reader and its errors
    return _read_name.__wrapped__(stream)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4096)
def _prepared(string: str) -> str:
    # asn1crypto's own preparation; it reads nothing of the instance it is a method of.
    return _ldap_string_prep.__wrapped__(_A_NAME_VALUE, string)  # type: ignore[attr-defined]


_A_NAME_VALUE = asn1_x509.NameTypeAndValue()


def _ldap_string_prep(self: Any, string: Any) -> Any:
    if type(string) is not str:  # (always a str from asn1crypto; anything else as it was)
        return _ldap_string_prep.__wrapped__(self, string)  # type: ignore[attr-defined]
    return _prepared(string)


def install() -> None:
    """Apply the four repairs (once; calling again changes nothing)."""
    # Each class that encodes its own children (Set and SetOf sort them for DER).
    for cls in (asn1_core.Sequence, asn1_core.SequenceOf, asn1_core.Set, asn1_core.SetOf):
        if "__wrapped__" not in vars(cls)["_set_contents"].__dict__:
            cls._set_contents = _clears_mutated(cls._set_contents)
    if pdf_generic.read_hex_string_from_stream is not _read_hex_string:
        _read_hex_string.__wrapped__ = pdf_generic.read_hex_string_from_stream  # type: ignore[attr-defined]
        pdf_generic.read_hex_string_from_stream = _read_hex_string
    if vars(pdf_generic.NameObject)["read_from_stream"].__func__ is not _read_name:
        _read_name.__wrapped__ = pdf_generic.NameObject.read_from_stream  # type: ignore[attr-defined]
        pdf_generic.NameObject.read_from_stream = staticmethod(_read_name)
    if asn1_x509.NameTypeAndValue._ldap_string_prep is not _ldap_string_prep:
        _ldap_string_prep.__wrapped__ = asn1_x509.NameTypeAndValue._ldap_string_prep  # type: ignore[attr-defined]
        asn1_x509.NameTypeAndValue._ldap_string_prep = _ldap_string_prep
