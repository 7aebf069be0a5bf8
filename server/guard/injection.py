"""Prompt-injection tripwires for support chat, and chat-template tokens in user text.

Tripwires only flag: "please ignore all previous emails" is a normal sentence. A message is
blocked only on strong evidence, when two different tripwires fire (or one fires next to a
smuggled template token). Patterns follow Vigil's YARA rules and Rebuff's keyword list (see
the guard notes); `act as` alone is not a tripwire (openhuman PR #2429 removed it for false
positives).
"""

from __future__ import annotations

import base64
import binascii
import re

from .report import Span

TRIPWIRES: dict[str, re.Pattern[str]] = {
    "instruction_override": re.compile(
        r"(?i)\b(?:ignore|disregard|skip|forget|neglect|overlook|omit|bypass|pay no attention to|do not follow|do not obey)\s+"
        r"(?:all\s+|any\s+|the\s+|your\s+|of\s+)*(?:prior|previous|preceding|above|foregoing|earlier|initial|system)\s+"
        r"(?:content|text|instructions?|directives?|commands?|context|prompts?|inputs?|rules|guidelines)\b"),
    "prompt_leak": re.compile(
        r"(?i)\b(?:reveal|print|repeat|show|output|display|tell me|give me|what (?:is|are))\b.{0,40}?"
        r"\b(?:system prompt|initial (?:prompt|instructions)|your (?:instructions|rules|system message|hidden prompt)|(?:the )?text above)\b"),
    "persona_jailbreak": re.compile(
        r"(?i)\b(?:do anything now|developer mode|jailbreak(?:ed)?|DAN mode)\b"
        r"|\b(?:pretend (?:to be|you are)|you are now)\b.{0,60}?\b(?:no|without|unrestricted|unfiltered)\b.{0,20}?\b(?:rules|restrictions|filters|limits|guidelines)\b"),
}

# Template markers of common chat formats; the model's own special tokens are added per tokenizer.
TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>", "<|eot_id|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|begin_of_text|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",
                    "<s>", "</s>")
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


def template_pattern(extra_tokens: list[str]) -> re.Pattern[str]:
    tokens = sorted({*TEMPLATE_MARKERS, *(t for t in extra_tokens if len(t) > 2)}, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens))


def find_tripwires(text: str) -> list[Span]:
    spans = [Span(m.start(), m.end(), name) for name, rx in TRIPWIRES.items() for m in rx.finditer(text)]
    for m in BASE64_RUN.finditer(text):  # an encoded instruction is the same instruction (OWASP LLM01)
        try:
            decoded = base64.b64decode(m.group(0) + "=" * (-len(m.group(0)) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if decoded.isprintable() and any(rx.search(decoded) for rx in TRIPWIRES.values()):
            spans.append(Span(m.start(), m.end(), "encoded_instruction"))
    return spans


def strong_evidence(tripwires: list[Span], template_tokens: int) -> bool:
    kinds = {s.type for s in tripwires}
    return len(kinds) >= 2 or (len(kinds) >= 1 and template_tokens > 0)
