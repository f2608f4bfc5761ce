"""hub.documents.speedups: each repair gives what the library's own code gives, only sooner."""

from __future__ import annotations

import io

import pytest
from asn1crypto import algos, cms, core, tsp, x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.misc import PdfReadError, PdfStreamError

import hub.documents  # noqa: F401  (applies the repairs)
from hub.documents import speedups


def _library_hex(data: bytes) -> tuple[object, int]:
    stream = io.BytesIO(data)
    return generic.read_hex_string_from_stream.__wrapped__(stream), stream.tell()


def _repaired_hex(data: bytes) -> tuple[object, int]:
    stream = io.BytesIO(data)
    return generic.read_hex_string_from_stream(stream), stream.tell()


def test_the_repairs_are_installed_once():
    speedups.install()  # a second call must not wrap the wrappers
    assert generic.read_hex_string_from_stream is speedups._read_hex_string
    assert generic.NameObject.read_from_stream is speedups._read_name
    assert not hasattr(speedups._read_name.__wrapped__, "__wrapped__")
    assert x509.NameTypeAndValue._ldap_string_prep is speedups._ldap_string_prep
    assert not hasattr(speedups._ldap_string_prep.__wrapped__, "__wrapped__")
    for cls in (core.Sequence, core.SequenceOf, core.Set, core.SetOf):
        assert not hasattr(vars(cls)["_set_contents"].__wrapped__, "__wrapped__")


@pytest.mark.parametrize("data", [
    b"<48656c6c6f> rest",
    b"<4865 6c6c\n6f\r\t> rest",        # white space inside is skipped
    b"<48656c6c6F0>",                   # upper case; an odd last digit counts as d0
    b"<>",
    b"<" + b"ab" * 70000 + b">tail",    # longer than one read
    b"<feff00480069>",                  # UTF-16 marker: a text string
])
def test_hex_strings_read_as_the_library_reads_them(data):
    assert _repaired_hex(data) == _library_hex(data)


@pytest.mark.parametrize("data", [b"<48zz>", b"<4865", b"<48%comment\n65>"])
def test_what_is_not_plain_hex_goes_to_the_library_reader(data):
    try:
        expected = _library_hex(data)
    except PdfStreamError as exc:
        with pytest.raises(PdfStreamError, match=str(exc).split(":")[0]):
            _repaired_hex(data)
    else:
        assert _repaired_hex(data) == expected


def _read_name(reader, data: bytes) -> tuple[object, int]:
    stream = io.BytesIO(data)
    try:
        return reader(stream), stream.tell()
    except PdfReadError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("data", [
    b"/Type /Page", b"/Contents 9 0 R", b"/Kids[4 0 R]", b"/A/B", b"/Name(text)", b"/N<48>",
    b"/Size\n", b"/ ", b"/", b"/Type",                 # an empty name; the stream's end
    b"/A#20B ", b"/A#2", b"/Caf\xc3\xa9 ",              # an escape, a bad one, a byte needing one
    b"/" + b"x" * 127 + b" ", b"/" + b"x" * 300 + b" ",   # around one read's length
])
def test_names_read_as_the_library_reads_them(data):
    library = _read_name(speedups._read_name.__wrapped__, data)
    assert _read_name(generic.NameObject.read_from_stream, data) == library
    if not isinstance(library[0], type):
        assert type(library[0]) is generic.NameObject


def test_objects_with_names_parse_the_same():
    data = b"<< /Type /Annot /Subtype/Widget /FT /Sig /T (homeroom) /Rect [0 0 1 1] /A#20B 1 /V 60 0 R >>"
    repaired = generic.read_object(io.BytesIO(data), generic.TrailerReference(None))
    generic.NameObject.read_from_stream = staticmethod(speedups._read_name.__wrapped__)
    try:
        library = generic.read_object(io.BytesIO(data), generic.TrailerReference(None))
    finally:
        generic.NameObject.read_from_stream = staticmethod(speedups._read_name)
    assert repaired == library and list(repaired) == list(library)


@pytest.mark.parametrize("value", [
    "Trường THPT Chu Văn An", "  Nguyễn   Văn\tAn ", "ＡＢＣ ﬁ", "a\u00adb\u200bc", "",
    "CCCD:001203004567", "Ｖｉệｔ\u00a0Nam",
])
def test_name_values_are_prepared_as_the_library_prepares_them(value):
    library = speedups._ldap_string_prep.__wrapped__(x509.NameTypeAndValue(), value)
    assert x509.NameTypeAndValue()._ldap_string_prep(value) == library
    assert x509.NameTypeAndValue()._ldap_string_prep(value) == library  # kept, same


@pytest.mark.parametrize("value", ["\ue000private", "mixed \u05d0 and latin", "\ufffd"])
def test_name_values_the_library_refuses_are_refused_every_time(value):
    with pytest.raises(ValueError) as library:
        speedups._ldap_string_prep.__wrapped__(x509.NameTypeAndValue(), value)
    for _ in range(2):
        with pytest.raises(ValueError, match=str(library.value)[:30]):
            x509.NameTypeAndValue()._ldap_string_prep(value)


def test_names_compare_as_before():
    a = x509.Name.build({"common_name": "Trường  THPT Chu Văn An", "country_name": "VN"})
    b = x509.Name.build({"common_name": "trường thpt chu văn an", "country_name": "VN"})
    c = x509.Name.build({"common_name": "Trường THPT Chu Văn Ân", "country_name": "VN"})
    assert a == b and a != c  # RFC 5280 comparison: case and inner spaces folded, accents kept


def _ess_cert_id() -> tsp.ESSCertIDv2:
    name = x509.Name.build({"common_name": "Trường THPT Chu Văn An", "country_name": "VN"})
    return tsp.ESSCertIDv2({
        "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
        "cert_hash": b"\x01" * 32,
        "issuer_serial": {"issuer": [x509.GeneralName(name="directory_name", value=name)], "serial_number": 7},
    })


def test_a_built_structure_is_encoded_once_then_kept(monkeypatch):
    attribute = cms.CMSAttribute({"type": "signing_certificate_v2",
                                  "values": [tsp.SigningCertificateV2({"certs": [_ess_cert_id()]})]})
    first = attribute.dump()
    calls = []
    for cls in (core.Sequence, core.SequenceOf, core.Set, core.SetOf):
        def spy(self, force=False, inner=vars(cls)["_set_contents"]):
            calls.append(type(self).__name__)
            return inner(self, force)
        monkeypatch.setattr(cls, "_set_contents", spy)
    assert attribute.dump() == first
    assert calls == []  # without the repair every level is encoded again
    assert first == cms.CMSAttribute.load(first).dump(force=True)


def test_a_change_after_encoding_still_shows():
    attribute = cms.CMSAttribute({"type": "signing_certificate_v2",
                                  "values": [tsp.SigningCertificateV2({"certs": [_ess_cert_id()]})]})
    attribute.dump()
    attribute["values"][0]["certs"][0]["issuer_serial"]["serial_number"] = 8  # three levels down
    changed = attribute.dump()
    assert cms.CMSAttribute.load(changed).native["values"][0]["certs"][0]["issuer_serial"]["serial_number"] == 8
    attribute["values"][0]["certs"].append(_ess_cert_id())  # a list that grows
    assert len(cms.CMSAttribute.load(attribute.dump()).native["values"][0]["certs"]) == 2
