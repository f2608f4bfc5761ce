"""Fuzzing: vendor payloads bent out of shape drive each adapter's normaliser, and config trees
bent out of shape drive the config loader. Neither may ever raise anything unexpected.

A normaliser (``adapter.normalize`` then the central format's validation, exactly as the
pipeline runs them) must end in a transcript, or in a ``ValidationError``/``ValueError`` whose
every message names what is wrong (``path: reason``) — that is what lands in the quarantine
for an operator to read. The config loader raises ``ConfigError`` and nothing else.

The strategies start from each vendor's real payload shape (the simulators' records and the
adapters' examples) and mutate it: values replaced by anything JSON can carry (NFD text, comma
decimals, impossible dates, huge numbers, NaN, nested objects where text belongs), keys
removed, unknown keys added; XML elements emptied, removed, duplicated, filled with text.
``HOCBA_HUB_FUZZ_EXAMPLES`` sets the examples per strategy (default 120).
"""

from __future__ import annotations

import copy
import json
import os
import re
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pydantic import ValidationError

from hub.config import ConfigError, HubConfig, parse_config
from hub.contracts import PluginContext, RawRecord
from hub.plugins import adapter_types
from hub.records import field_errors, parse_transcript

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("HOCBA_HUB_FUZZ_EXAMPLES", "120"))
# CI runs a fixed seed (a red run can be repeated); by hand, each run explores anew. No example
# database: nothing is written into the checkout.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("CI") is not None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
ENVELOPE = {"record_id": "00000000-0000-4000-8000-000000000000", "event": "NEW", "version": 1,
            "updated_at": "2025-06-01T07:00:00"}

# --- values a vendor might put anywhere -------------------------------------------------------

_MESSY_TEXT = ["", " ", "  Nguyễn  Văn   An ", unicodedata.normalize("NFD", "Lê Thị Hồng Nhung"), "8,5", "8.5",
               "10,0", "-1", "11", "1e309", "NaN", "31/02/2014", "2014-02-31", "08/02/2014", "2014-02-08",
               "Nam", "Nữ", "1", "2", "0", "T", "Đ", "H", "C", "CĐ", "K", "true", "null", "\u0000", "\ufeff",
               "02", "03", "04", "2024-2025", "2025-2024", "x" * 300, "<b>", "${HOME}", "🙂"]
# Keys as vendors spell them (letters, Vietnamese included, digits, underscores): error messages
# quote a key verbatim, so a key of punctuation would read as no name at all.
_keys = hs.text(alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
                               "ăâđêôơưĐáàảãạếềểễệóòỏõọúùủũụíìỉĩịýỳ"), min_size=1, max_size=10)
leaf = hs.one_of(
    hs.none(), hs.booleans(), hs.integers(-10**15, 10**15),
    hs.floats(allow_nan=True, allow_infinity=True), hs.text(max_size=30), hs.sampled_from(_MESSY_TEXT),
)
json_value = hs.recursive(leaf, lambda inner: hs.lists(inner, max_size=3)
                          | hs.dictionaries(_keys, inner, max_size=3), max_leaves=8)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@hs.composite
def mutated(draw: Any, bases: list[Any]) -> Any:
    """One of ``bases``, with up to six random edits anywhere in its tree."""
    doc = copy.deepcopy(draw(hs.sampled_from(bases)))
    for _ in range(draw(hs.integers(1, 6))):
        paths = _paths(doc)
        path = draw(hs.sampled_from(paths))
        op = draw(hs.sampled_from(["replace", "replace", "delete", "add", "text"]))
        if not path:  # the whole document
            if op == "replace":
                doc = draw(json_value)
            continue
        parent = _parent(doc, path)
        key = path[-1]
        if op == "replace":
            parent[key] = draw(json_value)
        elif op == "text":
            parent[key] = draw(hs.sampled_from(_MESSY_TEXT))
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(_keys)] = draw(json_value)
        else:
            parent.insert(draw(hs.integers(0, len(parent))), draw(json_value))
        if not isinstance(doc, (dict, list)):
            break
    return doc


def _json_payloads(bases: list[Any]) -> hs.SearchStrategy[bytes]:
    as_json = mutated(bases).map(lambda d: json.dumps(d, ensure_ascii=False).encode())
    return hs.one_of(as_json, as_json, as_json, hs.binary(max_size=200),
                     as_json.flatmap(lambda b: hs.integers(0, len(b)).map(lambda n: b[:n])))  # cut off


# --- each adapter's payload shape ----------------------------------------------------------------

def _vnpt_bases() -> list[Any]:
    from adapters.vnpt.simulator import VnptSimulator

    sim = VnptSimulator(records=6, invalid=4, seed=5)  # primary and secondary, and broken ones
    return [sim.vendor_record(i) for i in range(10)]


def _misa_bases() -> list[Any]:
    from adapters.misa.simulator import MisaSimulator

    sim = MisaSimulator(records=6, invalid=3, seed=5)
    return [sim.vendor_record(i) for i in range(6)] + [
        json.loads((ROOT / "adapters/misa/examples" / n).read_text(encoding="utf-8")) for n in ("record.json", "invalid.json")]


def _example(adapter: str, name: str = "record.json") -> list[Any]:
    return [json.loads((ROOT / "adapters" / adapter / "examples" / name).read_text(encoding="utf-8"))]


@hs.composite
def viettel_payloads(draw: Any) -> bytes:
    """The example XML with elements emptied, removed, duplicated, renamed or given odd text."""
    names = ["record.xml", "invalid.xml"]
    root = ET.fromstring((ROOT / "adapters/viettel/examples" / draw(hs.sampled_from(names))).read_bytes())
    for _ in range(draw(hs.integers(1, 6))):
        elements = list(root.iter())
        element = draw(hs.sampled_from(elements))
        op = draw(hs.sampled_from(["text", "text", "empty", "remove", "duplicate", "child", "rename"]))
        parents = {c: p for p in elements for c in p}
        if op == "text":
            element.text = draw(hs.sampled_from(_MESSY_TEXT) | hs.text(
                alphabet=hs.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20))
            element.text = "".join(ch for ch in element.text if ch in "\t\n\r" or ord(ch) >= 0x20)
        elif op == "empty":
            element.text = None
            for child in list(element):
                element.remove(child)
        elif op in ("remove", "duplicate") and element in parents:
            if op == "remove":
                parents[element].remove(element)
            else:
                parents[element].append(copy.deepcopy(element))
        elif op == "child":
            ET.SubElement(element, draw(hs.sampled_from(["x", "code", "value", "subject", "level"]))).text = "1"
        elif op == "rename":
            element.tag = draw(hs.sampled_from(["x", "record", "student", "code", "average"]))
    payload = ET.tostring(root, encoding="utf-8")
    return draw(hs.sampled_from([payload, payload, payload[: len(payload) // 2], b"<" + payload]))


def _adapter(name: str) -> Any:
    info = adapter_types().get(name)
    if info is None:
        pytest.skip(f"adapter {name!r} is not installed")
    # As ``hocba-hub normalize`` builds it: normalising needs no connection or settings.
    return info.cls(info.cls.Settings.model_construct(), PluginContext(name, Path(".")))


# Messages Python's own conversions produce: a normaliser that lets one of these through did not
# check the value itself, and the operator would read nothing about which field it was.
_PYTHON_INTERNAL = re.compile(
    r"(?:\S+ )?(?:invalid literal for|could not convert|object is not|not enough values|too many values|"
    r"math domain error|unconverted data remains|does not match format|day is out of range|"
    r"month must be in|year \d+ is out of range|substring not found|list index out of range)")
# ``path: reason`` (the central format) or ``path is …`` / ``path has …`` (the adapters):
# the field's path first, then what is wrong with it.
_NAMED = re.compile(r"^(the )?[\w\[\]./()<>{}-]+(:\s*|\s+)\S")


def _names_what_is_wrong(message: str) -> bool:
    # Python's wording after a named path is fine ("student.birth_date: impossible date …: day
    # is out of range for month"); Python's wording alone names nothing.
    return bool(_NAMED.match(message)) and not _PYTHON_INTERNAL.match(message)


def normalise_or_name_the_field(adapter: Any, payload: bytes) -> None:
    """What the pipeline does with a raw record, held to the contract above."""
    try:
        data = adapter.normalize(RawRecord("fuzz-1", payload))
        record = parse_transcript({**data, **ENVELOPE})
    except ValidationError as exc:
        errors = field_errors(exc)
        assert errors and all(_names_what_is_wrong(e) for e in errors), errors
    except ValueError as exc:
        assert _names_what_is_wrong(str(exc)), repr(exc)
    else:
        dumped = record.model_dump(mode="json", by_alias=True)
        assert dumped["idbanghi"] == ENVELOPE["record_id"]
        assert parse_transcript(record.model_dump(mode="json")) == record  # a record that round-trips


@FUZZ
@given(payload=_json_payloads(_vnpt_bases()))
def test_vnpt_normaliser(payload):
    normalise_or_name_the_field(_adapter("vnpt"), payload)


@FUZZ
@given(payload=viettel_payloads())
def test_viettel_normaliser(payload):
    normalise_or_name_the_field(_adapter("viettel"), payload)


@FUZZ
@given(payload=_json_payloads(_misa_bases()))
def test_misa_normaliser(payload):
    normalise_or_name_the_field(_adapter("misa"), payload)


@FUZZ
@given(payload=_json_payloads(_example("push")))
def test_push_normaliser(payload):
    normalise_or_name_the_field(_adapter("push"), payload)


@FUZZ
@given(payload=_json_payloads(_example("spreadsheet")))
def test_spreadsheet_row_normaliser(payload):
    normalise_or_name_the_field(_adapter("spreadsheet"), payload)


def test_the_unmutated_bases_normalise():
    """The strategies start from real payloads: the valid ones must come out as transcripts."""
    adapter = _adapter("vnpt")
    for base in _vnpt_bases()[:6]:
        data = adapter.normalize(RawRecord("x", json.dumps(base, ensure_ascii=False).encode()))
        assert parse_transcript({**data, **ENVELOPE}).record_id == ENVELOPE["record_id"]


def test_vnpt_unknown_empty_key_is_named():
    base = {**_vnpt_bases()[0], "": 1}
    normalise_or_name_the_field(_adapter("vnpt"), json.dumps(base, ensure_ascii=False).encode())


def test_misa_evaluation_type_of_the_wrong_type_is_named():
    base = json.loads((ROOT / "adapters/misa/examples/record.json").read_text(encoding="utf-8"))
    base["evaluation"]["subjects"][0]["evaluationType"] = ["score"]
    normalise_or_name_the_field(_adapter("misa"), json.dumps(base, ensure_ascii=False).encode())


# --- the config loader ------------------------------------------------------------------------

BASE_CONFIG = {
    "data_dir": "hocba-data",
    "store": "",
    "http": {"bind": "127.0.0.1:8080"},
    "workers": {"processes": 1},
    "delivery": {"max_attempts": 3, "backoff_initial": 0.5},
    "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 60,
                  "settings": {"base_url": "http://127.0.0.1:9101", "client_id": "c",
                               "client_secret": "${HOCBA_FUZZ_SECRET:-s}", "page_size": 20}}],
    "destination": {"name": "central", "type": "ttdlqg",
                    "settings": {"base_url": "http://127.0.0.1:9100", "token": "t"}},
    "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": "keys", "password": "p"}}],
    "signing": {"steps": [{"role": r, "signer": "keys"} for r in ("homeroom_teacher", "principal", "school_seal")]},
}
_CONFIG_TEXT = _MESSY_TEXT + ["${HOCBA_FUZZ_UNSET}", "${HOCBA_FUZZ_UNSET:-x}", "${", "postgresql://",
                              "postgresql://u@h:notaport/db", "postgresql://u@h/", "mysql://x/y",
                              "postgresql://hub@db:5432/hocba", "vnpt", "ttdlqg", "pkcs12", "csc", "B-LT"]


@hs.composite
def config_trees(draw: Any) -> Any:
    doc = draw(mutated([BASE_CONFIG]))
    if isinstance(doc, dict) and draw(hs.booleans()):
        key = draw(hs.sampled_from(sorted(BASE_CONFIG)))
        doc[key] = draw(hs.sampled_from(_CONFIG_TEXT) | json_value)
    return doc


def test_the_base_config_is_valid():
    assert isinstance(parse_config(copy.deepcopy(BASE_CONFIG)), HubConfig)


@FUZZ
@given(tree=config_trees())
def test_config_loader_raises_only_config_errors(tree):
    try:
        config = parse_config(tree)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
    else:
        assert isinstance(config, HubConfig)
