"""The mutated vendor payload battery: what share of bent payloads comes out right.

    python bench/mutations.py [--per-base N] [--seed S] [--show K] [--adapter NAME ...]

Each adapter's sample payloads (the simulators' records and the adapters' ``examples/``) are
mutated one thing at a time — a JSON ``true`` or an object where a value belongs, a number sent
as text and text as a number, Unicode digits, an invisible character inside a value, a value
made only of invisible characters, a huge string, a removed key or ``null``, an impossible date,
a date with a time zone, a duplicated JSON key (a duplicated XML element), a negative, infinite
or NaN number — and run through the one normalisation path (``hub.engine.normalize.normalize``,
as the pipeline's normalise stage runs it). Each outcome is one of:

- **refused**: no record, and every reason names a field (``path: what is wrong``);
- **accepted**: a record, and the mutation left it as it must — the same record as the
  unmutated payload's for a mutation that only disguises a value (Unicode digits, invisible
  characters, a number's type), the vendor's value given up (``None``) for a removed one, the
  date of Vietnam time for a zoned one, the same record for a mutation in a key the adapter does
  not read;
- **WRONG**: a crash (any exception out of ``normalize``), a refusal with a reason that names no
  field, or a record that took the bad value (a ``true`` read as 1, a removed field filled in
  with a default, an impossible date, a huge string, a duplicated key).

It prints the count of each class per adapter and mutation, the first few WRONG cases (the
mutation and the reasons, never the values), and the last line ``right: P %``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import random
import re
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.contracts import PluginContext, RawRecord  # noqa: E402
from hub.engine.normalize import Envelope, normalize  # noqa: E402
from hub.plugins import adapter_types  # noqa: E402

ENVELOPE = Envelope("00000000-0000-4000-8000-000000000000", 1, "NEW", "2025-06-01T07:00:00")
# Characters no one sees. Not NEL (U+0085) or the C0 separators: the central format reads those
# as the line breaks and spaces they are, so one inside a word splits it (as a tab would).
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u202e", "\x00", "\x07",
             "\x1b", "\x7f", "\x9b"]
DIGIT_SETS = ["０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗"]
BAD_DATES = ["2014-02-30", "2014-13-01", "31/02/2014", "2014-02-08T25:00:00", "2014-02-08Tgarbage",
             "2014-02-08 nonsense", "0000-00-00", "2014-2-8x", "99999-01-01"]
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{2}/\d{2}/\d{4})")
# ``path: reason`` or ``path is …`` (the adapters): a field first, then what is wrong. Python's
# own wording alone names nothing (tests/test_fuzz.py holds the same rule).
_NAMED = re.compile(r"^(the )?[\w\[\]./()<>{}@-]+(:\s*|\s+)\S")
_PYTHON_INTERNAL = re.compile(
    r"(?:\S+ )?(?:invalid literal for|could not convert|object is not|not enough values|too many values|"
    r"math domain error|unconverted data remains|does not match format|day is out of range|"
    r"month must be in|year \d+ is out of range|substring not found|list index out of range)")


@dataclass
class Case:
    adapter: str
    kind: str          # the mutation
    where: str         # the vendor path it touched
    expect: str        # refuse | clean | absent | shift
    payload: bytes
    content_type: str
    target: str | None = None     # for "shift": the value the record must hold instead


def named(message: str) -> bool:
    return bool(_NAMED.match(message)) and not _PYTHON_INTERNAL.match(message)


def flatten(node: Any) -> dict[str, Any]:
    """``path → value`` of every leaf (an empty list or object counts as one)."""
    return {show(path): value for path, value in leaves(node)}


# --- JSON mutations ---------------------------------------------------------------------------------

def leaves(doc: Any) -> list[tuple[tuple, Any]]:
    """``(path, value)`` of every scalar, and of every empty list or object, in document order."""
    out, stack = [], [((), doc)]
    while stack:
        path, node = stack.pop()
        items = (list(node.items()) if isinstance(node, dict) else list(enumerate(node))
                 if isinstance(node, list) else None)
        if not items:
            out.append((path, node))
            continue
        stack.extend((path + (k,), v) for k, v in reversed(items))
    return out


def dicts(doc: Any) -> list[tuple]:
    """The path of every non-empty object, outermost first."""
    found = {path[:i]: None for path, _ in leaves(doc) for i in range(len(path))
             if isinstance(at(doc, path[:i]), dict)}
    return sorted(found, key=len)


def at(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def show(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _digits_swapped(text: str, rng: random.Random) -> str:
    digits = rng.choice(DIGIT_SETS)
    return "".join(digits[int(ch)] if ch.isascii() and ch.isdigit() else ch for ch in text)


def json_mutation(base: Any, rng: random.Random) -> tuple[str, str, str, bytes, str | None]:
    """One mutation of ``base``: (kind, where, expectation, payload bytes, target)."""
    doc = copy.deepcopy(base)
    all_leaves = [(p, v) for p, v in leaves(doc) if p]
    strings = [(p, v) for p, v in all_leaves if isinstance(v, str) and v.strip()]
    numbers = [(p, v) for p, v in all_leaves if isinstance(v, (int, float)) and not isinstance(v, bool)]
    dated = [(p, v) for p, v in strings if _DATE.match(v)]
    digits = [(p, v) for p, v in strings if any(ch.isdigit() for ch in v)]
    numeric_text = [(p, v) for p, v in strings if re.fullmatch(r"\d+([.,]\d+)?", v)]
    kinds = ["bool", "container", "invisible", "only_invisible", "huge", "remove", "null", "duplicate_key"]
    kinds += ["unicode_digits"] * bool(digits) + ["bad_date", "zoned_date"] * bool(dated)
    kinds += ["number_as_text", "odd_number"] * bool(numbers) + ["text_as_number"] * bool(numeric_text)
    kind = rng.choice(kinds)
    target = None

    def put(path: tuple, value: Any) -> None:
        at(doc, path[:-1])[path[-1]] = value

    if kind == "bool":
        path, _ = rng.choice([(p, v) for p, v in all_leaves if not isinstance(v, bool)] or all_leaves)
        put(path, rng.choice([True, False]))
        expect = "refuse"
    elif kind == "container":
        path, _ = rng.choice(all_leaves)
        put(path, rng.choice([{}, [], {"x": 1}, ["a"]]))
        expect = "refuse"
    elif kind == "invisible":
        path, value = rng.choice(strings)
        i = rng.randint(0, len(value))
        put(path, value[:i] + rng.choice(INVISIBLE) + value[i:])
        expect = "clean"
    elif kind == "only_invisible":
        path, _ = rng.choice(strings)
        put(path, "".join(rng.choice(INVISIBLE[:6]) for _ in range(rng.randint(1, 3))))
        expect = "absent"
    elif kind == "huge":
        path, _ = rng.choice(strings)
        put(path, "Nguyễn Văn " * 100_000)
        expect = "refuse"
    elif kind == "remove":
        # Dict keys only: removing a list element shifts every later one (no single field).
        path = rng.choice([p for p, _ in all_leaves if not isinstance(p[-1], int)] or [all_leaves[0][0]])
        del at(doc, path[:-1])[path[-1]]
        expect = "absent"
    elif kind == "null":
        path, _ = rng.choice(all_leaves)
        put(path, None)
        expect = "absent"
    elif kind == "unicode_digits":
        path, value = rng.choice(digits)
        put(path, _digits_swapped(value, rng))
        expect = "clean"
    elif kind == "bad_date":
        path, _ = rng.choice(dated)
        put(path, rng.choice(BAD_DATES))
        expect = "refuse"
    elif kind == "zoned_date":
        path, value = rng.choice([(p, v) for p, v in dated if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v)] or dated)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            put(path, f"{value}T17:00:00Z")     # 17:00 UTC is midnight in Vietnam: the next day
            target = (dt.date.fromisoformat(value) + dt.timedelta(days=1)).isoformat()
            expect = "shift"
        else:
            put(path, value + "T17:00:00Z")
            expect = "refuse"
    elif kind == "number_as_text":
        path, value = rng.choice(numbers)
        put(path, str(value))
        expect = "clean"
    elif kind == "text_as_number":
        path, value = rng.choice(numeric_text)
        number = float(value.replace(",", "."))
        put(path, int(number) if number.is_integer() and "." not in value and "," not in value else number)
        expect = "clean"
    elif kind == "odd_number":
        path, _ = rng.choice(numbers)
        put(path, rng.choice([-1, float("inf"), float("nan"), 10**30, 1e-300]))
        expect = "refuse"
    else:  # duplicate_key
        container = rng.choice(dicts(doc))
        key = rng.choice(list(at(doc, container)))
        payload = _with_duplicate(doc, container, key)
        return kind, show(container + (key,)), "refuse", payload, None
    return kind, show(path), expect, json.dumps(doc, ensure_ascii=False).encode(), target


def _with_duplicate(doc: Any, container: tuple, key: str) -> bytes:
    marker = "\u2063dup\u2063"   # a key no payload holds, replaced in the text afterwards
    node = at(doc, container)
    node[marker] = "trùng"
    text = json.dumps(doc, ensure_ascii=False)
    return text.replace(json.dumps(marker, ensure_ascii=False), json.dumps(key, ensure_ascii=False), 1).encode()


# --- XML mutations (viettel) ------------------------------------------------------------------------

def xml_mutation(base: bytes, rng: random.Random) -> tuple[str, str, str, bytes, str | None]:
    root = ET.fromstring(base)
    parents = {c: p for p in root.iter() for c in p}
    texts = [e for e in root.iter() if e.text and e.text.strip() and not len(e)]
    attrs = [(e, a) for e in root.iter() for a in e.attrib]
    kind = rng.choice(["invisible", "only_invisible", "huge", "remove", "empty", "unicode_digits", "bad_date",
                       "duplicate_element", "bool_text", "invisible_attr"])
    target = None
    element = rng.choice(texts)
    where = element.tag
    if kind == "invisible":
        i = rng.randint(0, len(element.text))
        element.text = element.text[:i] + rng.choice([c for c in INVISIBLE if c not in "\x00\x07\x1b"]) + element.text[i:]
        expect = "clean"
    elif kind == "invisible_attr" and attrs:
        element, name = rng.choice(attrs)
        where = f"{element.tag}/@{name}"
        value = element.get(name)
        element.set(name, value[:1] + "\u200b" + value[1:])
        expect = "clean"
    elif kind == "only_invisible":
        element.text = "\u200b\u00ad"
        expect = "absent"
    elif kind == "huge":
        element.text = "Nguyễn Văn " * 100_000
        expect = "refuse"
    elif kind == "remove" and element in parents:
        parents[element].remove(element)
        expect = "absent"
    elif kind == "empty":
        element.text = None
        expect = "absent"
    elif kind == "unicode_digits" and any(ch.isdigit() for ch in element.text):
        element.text = _digits_swapped(element.text, rng)
        expect = "clean"
    elif kind == "bad_date":
        dated = [e for e in texts if _DATE.match(e.text.strip())]
        element = rng.choice(dated or texts)
        where = element.tag
        element.text = rng.choice(BAD_DATES)
        expect = "refuse" if dated else "refuse"
    elif kind == "duplicate_element" and element in parents:
        copy_ = copy.deepcopy(element)
        copy_.text = (copy_.text or "") + "1"
        parents[element].append(copy_)
        expect = "refuse"
    elif kind == "bool_text":
        element.text = rng.choice(["true", "false"])
        expect = "refuse"
    else:
        kind = "invisible"
        element.text = "\u200b" + element.text
        expect = "clean"
    return kind, where, expect, ET.tostring(root, encoding="utf-8"), target


# --- the bases ----------------------------------------------------------------------------------------

def bases() -> dict[str, list[tuple[bytes, str]]]:
    from adapters.misa.simulator import MisaSimulator
    from adapters.vnpt.simulator import VnptSimulator

    def js(doc: Any) -> tuple[bytes, str]:
        return json.dumps(doc, ensure_ascii=False).encode(), "application/json"

    def example(adapter: str, name: str = "record.json") -> bytes:
        return (ROOT / "adapters" / adapter / "examples" / name).read_bytes()

    vnpt, misa = VnptSimulator(records=6, seed=5), MisaSimulator(records=6, seed=5)
    return {
        "vnpt": [js(vnpt.vendor_record(i)) for i in range(6)] + [(example("vnpt"), "application/json")],
        "misa": [js(misa.vendor_record(i)) for i in range(6)] + [(example("misa"), "application/json")],
        "push": [(example("push"), "application/json")],
        "spreadsheet": [(example("spreadsheet"), "application/json")],
        "viettel": [(example("viettel", "record.xml"), "application/xml")],
    }


def make_adapter(name: str) -> Any:
    info = adapter_types()[name]
    # As ``hocba-hub normalize`` builds it: normalising needs no connection or settings.
    return info.cls(info.cls.Settings.model_construct(), PluginContext(name, Path(".")))


# --- judging --------------------------------------------------------------------------------------------

def run(adapter: Any, payload: bytes, content_type: str) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    outcome = normalize(adapter, RawRecord("battery-1", payload, content_type), ENVELOPE)
    if outcome.record is None:
        return None, outcome.errors
    return outcome.record.model_dump(mode="json"), ()


def judge(case: Case, adapter: Any, base_record: dict[str, Any]) -> tuple[str, str]:
    """("refused" | "accepted" | "WRONG", why)."""
    try:
        record, errors = run(adapter, case.payload, case.content_type)
    except BaseException as exc:  # the battery's point: nothing may escape the normalisation path
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return "WRONG", f"crash {type(exc).__name__} at {Path(last.filename).name}:{last.lineno}"
    if record is None:
        unnamed = [e for e in errors if not named(e)]
        if not errors or unnamed:
            return "WRONG", f"refused without naming a field: {(unnamed or ['(no reason)'])[0][:120]!r}"
        return "refused", errors[0][:100]
    before, after = flatten(base_record), flatten(record)
    changed = {k for k in before.keys() | after.keys() if before.get(k, "∅") != after.get(k, "∅")}
    if not changed:
        return "accepted", "same record (a disguise undone, or a key the adapter does not read)"
    if case.expect == "absent" and all(after.get(k) in (None, [], "") for k in changed):
        return "accepted", "the field left empty"
    if case.expect == "shift" and len(changed) == 1 and after.get(next(iter(changed))) == case.target:
        return "accepted", "the date of Vietnam time"
    if case.kind == "bool_text" and all(after.get(k) in ("true", "false") for k in changed):
        # XML carries only text: "true" as a name is the text it is, not a boolean made a value.
        return "accepted", "the text as written"
    field = sorted(changed)[0]
    return "WRONG", f"accepted with {field} changed ({len(changed)} field(s))"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-base", type=int, default=60, help="mutations per sample payload")
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--show", type=int, default=25, help="WRONG cases printed")
    parser.add_argument("--adapter", action="append", help="only these adapters")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    tally: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    wrong: list[tuple[Case, str]] = []
    for name, samples in bases().items():
        if args.adapter and name not in args.adapter:
            continue
        adapter = make_adapter(name)
        for payload, content_type in samples:
            base_record, errors = run(adapter, payload, content_type)
            if base_record is None:
                print(f"{name}: a sample payload does not normalise ({errors[:1]}); skipped")
                continue
            for _ in range(args.per_base):
                mutate: Callable = xml_mutation if content_type == "application/xml" else json_mutation
                source = payload if content_type == "application/xml" else json.loads(payload)
                kind, where, expect, bent, target = mutate(source, rng)
                case = Case(name, kind, where, expect, bent, content_type, target)
                verdict, why = judge(case, adapter, base_record)
                tally[name][verdict] += 1
                by_kind[kind][verdict] += 1
                if verdict == "WRONG":
                    wrong.append((case, why))
    total = sum(sum(c.values()) for c in tally.values())
    right = total - sum(c["WRONG"] for c in tally.values())
    print(f"{'':<18}{'refused':>9}{'accepted':>10}{'WRONG':>7}")
    for label, counts in [*sorted(tally.items()), ("", Counter()), *sorted(by_kind.items())]:
        if label:
            print(f"{label:<18}{counts['refused']:>9}{counts['accepted']:>10}{counts['WRONG']:>7}")
        else:
            print()
    for case, why in wrong[:args.show]:
        print(f"WRONG {case.adapter} {case.kind} at {case.where}: {why}")
    print(f"{total} mutated payloads in {time.perf_counter() - started:.1f} s; WRONG: {total - right}")
    print(f"right: {100 * right / max(total, 1):.1f} %")
    return 0 if right == total else 1


if __name__ == "__main__":
    sys.exit(main())
