"""The personal identification number (số định danh cá nhân): its structure and its checks.

Twelve digits (Nghị định 137/2015/NĐ-CP, Thông tư 07/2016/TT-BCA, Điều 7):

- digits 1–3: the code of the province where the birth was registered (the 63 province codes
  of Thông tư 07/2016; numbers issued before the 2025 merger of provinces keep their code);
- digit 4: gender and century of birth: 0/1 male/female born 1900–1999, 2/3 born 2000–2099,
  4/5 2100–2199, 6/7 2200–2299, 8/9 1800–1899 (even male, odd female);
- digits 5–6: the last two digits of the year of birth;
- digits 7–12: a running number.

``problems(number, gender, birth_date)`` says what does not hold, in words that quote no digit
of the number (it is personal data). ``make(province, gender, birth_date, serial)`` builds one
(synthetic data).
"""

from __future__ import annotations

import datetime as dt

__all__ = ["PROVINCE_CODES", "problems", "make"]

PROVINCE_CODES = frozenset({
    "001", "002", "004", "006", "008", "010", "011", "012", "014", "015", "017", "019", "020",
    "022", "024", "025", "026", "027", "030", "031", "033", "034", "035", "036", "037", "038",
    "040", "042", "044", "045", "046", "048", "049", "051", "052", "054", "056", "058", "060",
    "062", "064", "066", "067", "068", "070", "072", "074", "075", "077", "079", "080", "082",
    "083", "084", "086", "087", "089", "091", "092", "093", "094", "095", "096",
})

# Century of birth → the digit for a male; a female's is one more.
_CENTURY_DIGIT = {1800: 8, 1900: 0, 2000: 2, 2100: 4, 2200: 6}


def _gender_digit(gender: int, year: int) -> int | None:
    base = _CENTURY_DIGIT.get(year // 100 * 100)
    if base is None:
        return None
    return base + (1 if gender == 2 else 0)


def problems(number: str, gender: int | None = None, birth_date: dt.date | None = None) -> list[str]:
    """What in ``number`` breaks the structure, or disagrees with the gender (QCVN 109 code:
    1 male, 2 female; 0 or ``None`` unknown) and birth date given; empty if it holds."""
    if len(number) != 12 or not number.isascii() or not number.isdigit():
        return ["must be 12 digits"]
    out = []
    if number[:3] not in PROVINCE_CODES:
        out.append("the first three digits are not a province code")
    digit = int(number[3])
    if birth_date is not None:
        if gender in (1, 2):
            expected = _gender_digit(gender, birth_date.year)
            if expected is not None and digit != expected:
                out.append("the fourth digit (gender and century) does not match gender and birth date")
        elif digit // 2 != (_gender_digit(1, birth_date.year) or 0) // 2:
            out.append("the fourth digit (century) does not match the birth date")
        if number[4:6] != f"{birth_date.year % 100:02d}":
            out.append("digits 5-6 are not the last two digits of the birth year")
    return out


def make(province: str, gender: int, birth_date: dt.date, serial: int) -> str:
    """A number with this structure (for synthetic data): ``serial`` is the running number."""
    digit = _gender_digit(gender, birth_date.year)
    if province not in PROVINCE_CODES or digit is None:
        raise ValueError("no such province code or century")
    return f"{province}{digit}{birth_date.year % 100:02d}{serial % 1_000_000:06d}"
