"""Personal data in support chat: emails, phone numbers, payment cards (Luhn) and IBANs (mod 97).

The checksums keep order numbers and dates out: a 16-digit number is a card only if it passes
Luhn and starts like one; an IBAN only if its mod-97 check is 1.
"""

from __future__ import annotations

import re

from .report import Span

EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b"
)
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{1,4}\)[\s.\-]?)?\d{2,4}(?:[\s.\-]\d{2,4}){1,4}(?![\w])|(?<![\w+])\+\d{8,15}(?!\w)"
)
CARD = re.compile(r"(?<![\d\-])(?:\d[ \-]?){12,18}\d(?![\d\-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")

CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9])|3(?:0[0-5]|[68])|35)")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(value: str) -> bool:
    compact = value.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rotated = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rotated)) % 97 == 1


def _phone(m: re.Match[str]) -> bool:
    text = m.group(0)
    digits = sum(c.isdigit() for c in text)
    if not 9 <= digits <= 15:
        return False
    if text.startswith("+") or "(" in text:
        return True
    # without a country code or area-code brackets, dots alone look like versions and IPs
    return "." not in text and re.search(r"\d{4}-\d{2}-\d{2}", text) is None


def find_pii(text: str) -> list[Span]:
    spans = [Span(m.start(), m.end(), "email", 0) for m in EMAIL.finditer(text)]
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and CARD_PREFIX.match(digits) and luhn(digits):
            spans.append(Span(m.start(), m.end(), "card_number", 0))
    for m in IBAN.finditer(text):
        if iban_valid(m.group(0)):
            spans.append(Span(m.start(), m.end(), "iban", 0))
    spans += [Span(m.start(), m.end(), "phone_number", 1) for m in PHONE.finditer(text) if _phone(m)]
    return spans
