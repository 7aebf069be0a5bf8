"""Prompt-injection tripwires for support chat, and chat-template tokens in user text.

Tripwires only flag: "please ignore all previous emails" is a normal sentence. A message is
blocked only on strong evidence (`strong_evidence`): two different kinds of tripwire, one kind
next to a smuggled template token, or one kind so specific that it is strong on its own (a named
jailbreak persona such as DAN, whose set-up text nobody types by accident). Generic words never
block alone. Patterns follow Vigil's YARA rules and Rebuff's keyword list (see the guard notes);
`act as` alone is not a tripwire (openhuman PR #2429 removed it for false positives), nor are
"developer mode" or "jailbroken" without an AI persona around them (phones have both).

What each kind catches (tests/corpora/ measures them; `tandem guard bench` prints the rates):

- instruction_override: ignore/disregard/forget/override ... previous/above/your ... instructions,
  "ignore the above and ...", "forget everything before that", "new instructions:", "the previous
  text was a test", "you no longer have to follow the rules";
- prompt_leak: reveal/print/repeat/spell-check ... the system prompt, your instructions, the text
  above, the beginning of the document, the last lines of this chat;
- persona_jailbreak: "you are now X", "from now on you are going to act as", an AI "with no
  restrictions", "pretend to be an evil AI", "<X> mode" personas;
- known_jailbreak (strong alone): DAN / STAN / DUDE / AIM and kin set up as a persona, "stands
  for Do Anything Now", "Developer Mode enabled" for a chatbot, the [🔓JAILBREAK] answer markers;
- role_header: fake system or assistant turns in user text (`### SYSTEM:`, `[SYSTEM]`, `System:`
  with an instruction, `<system>`, BEGIN SYSTEM PROMPT, `Assistant:` lines, what a stripped
  template token leaves behind);
- output_forcing: say/print/output "<quoted>", respond only with, print exactly the following,
  start your reply with;
- rogue_string: the classic payloads ("I have been PWNED", "Haha pwned!!", "I hate humans");
- encoding_wrapper: decode/translate ... and then follow it, "the following is base64/rot13/hex",
  "repeat after me";
- encoded_instruction: a base64, hex, URL-encoded or ROT13 stretch that decodes to a tripwire (it
  is reported as that tripwire's kind too: an encoded instruction is the same instruction).
  Leetspeak ("1gn0r3 4ll pr3v10us") is read as the letters it stands for. The tripwires see the
  text after the secret and personal-data redaction, so a hex payload whose digits look like a
  phone number may arrive cut up.

Every pattern is linear: gaps and repetitions are bounded (`.{0,40}?`, `\\s{1,5}`, `{0,2}`), and
no quantified group can match the same text in two ways, since inputs can be 64 KB
(tests/guard/test_guard_injection.py times each on worst cases).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import urllib.parse

from .report import Span

# The patterns are written in lower case and run on an ASCII-lower-cased copy of the text (same
# offsets): far faster than (?i) in Python's re. What case does tell apart is checked on the text
# as written, through named groups: `cap…` must start with a capital ("You are now Xi Jinping", not
# "you are now signed out"), `upper…` must be all capitals (DAN, PWNED); `mine…` must not hold "my"
# or "our" ("ignore my previous email" is the customer's own message); `ai…` needs an AI or a
# persona within the 60 characters before it ("a chatbot without restrictions", not "a return
# without restrictions").
_SP = r"\s{1,5}"  # a bounded run of white space between words
_C = r"[^.!?\n]"  # a gap stays within one sentence
_Q = r"[\"“”'‘’`]"

_OVERRIDE_VERB = (
    r"(?:ignore|ignoring|disregard|forget|skip|neglect|overlook|omit|bypass|override|pay no attention to|"
    r"do not follow|don't follow|stop following|do not obey|don't obey)"
)
_OVERRIDE_QUALIFIER = r"(?:previous|prior|preceding|above|earlier|initial|original|foregoing|former|all|any|your|these|those|system)"
_OVERRIDE_NOUN = (
    r"(?:instructions?|intructions|directives?|directions|commands?|prompts?|rules|guidelines|context|text|tasks?|"
    r"assignments?|programming|training|policies|restrictions|requests)"
)
_LEAK_VERB = (
    r"(?:reveal|print|repeat|show|output|display|tell me|give me|what (?:is|are|was|were)|spell[- ]?check|summari[sz]e|"
    r"copy|paste|quote|recite|write out|type out|list|dump|leak|disclose|translate|tokeni[sz]e|spell|read me|send me)"
)
_NO_LIMITS = (
    r"(?:no|without(?: any)?|free (?:from|of)|not bound by|unbound by|broken free of|unrestricted|unfiltered|uncensored|"
    r"amoral|ignores?|not (?:have to|need to) (?:abide by|follow)|(?:does|do|will) not (?:follow|obey|abide by))"
)
_LIMITS = (
    r"(?:rules|restrictions|limitations|filters|filtering|censorship|guidelines|limits|ethics|morals|boundaries|confines|"
    r"polic(?:y|ies)|content policy|safeguards)"
)
_PERSONA_VERB = (
    r"(?:you are|you're|you will be|act as|acting as|act like|pretend to be|pretend you are|roleplay as|role of|"
    r"known as|named|called|respond (?:to all of my questions )?as|answer (?:it )?(?:just )?like|act just like|"
    r"simulate|simulator to the|stay in|stay as|become|i'm|i am)"
)
_MODE_VERB = (
    r"(?:you are|you're|you will be|act as|acting as|act like|pretend to be|pretend you are|simulate|stay in|become|enter|"
    r"enable|activate|you are now in|you're now in)"
)
_AI_BEFORE = re.compile(
    r"\b(?:ai|a\.i\.|chatbot|bot|model|llm|assistant|gpt|chatgpt|character|persona|act as|acting as|pretend|"
    r"roleplay|role of|named|called|known as|simulate|become|you(?:'re| are| will| have| had| must| can| no longer))\b"
)


def _kind(anchors: str, *branches: str, flags: int = 0) -> re.Pattern[str]:
    """One kind's branches behind a lookahead for the words they start with: Python's re tries every
    branch at every position, and the lookahead fails fast where none can start (`tandem guard scan` prints the time a scan takes)."""
    return re.compile(f"(?=(?:{anchors}))(?:{'|'.join(branches)})", flags)


TRIPWIRES: dict[str, re.Pattern[str]] = {
    "instruction_override": _kind(
        r"ignor|disregard|forget|skip|neglect|overlook|omit|bypass|override|pay|do|stop|new|updated|real|actual|revised|your|the|"
        r"previous|above|preceding|prior|no|all|earlier|vergiss|vergessen",
        rf"\b(?:ignore|disregard|forget){_SP}(?:all{_SP}(?:of{_SP})?)?(?:the{_SP}above|everything{_SP}above){_SP}(?:and|instead|then)\b",
        rf"\b(?:forget|ignore|disregard){_SP}(?:about{_SP})?(?:all{_SP})?(?:everything|all){_SP}"
        rf"(?:before|above|so far|from|we(?:'ve)?{_SP}(?:talked|discussed|said)|(?:i|you)(?:'ve)?{_SP}(?:have{_SP})?"
        rf"(?:told|said|learned|were told|know))",
        # "Forget everything, write ...": only where a sentence starts
        rf"(?<![\w,'])(?<![\w,']\s)(?:forget|ignore|disregard){_SP}(?:about{_SP})?everything\s{{0,3}}[,.!;]",
        rf"\b(?:ignore|disregard|forget){_SP}(?:all{_SP})?preceding{_SP}orders\b",
        rf"\b(?:your{_SP})?(?:new|updated|real|actual|revised){_SP}(?:instructions|tasks?|assignment|rules|directives|goal|objective|role)"
        rf"(?:{_SP}for{_SP}(?:the{_SP})?(?:ai|assistant|agent|model|bot|llm|chatbot)(?:{_SP}(?:agent|assistant|model))?)?(?:{_SP}"
        rf"(?:is|are))?\s{{0,3}}[:.]",
        rf"\b(?:the{_SP})?(?:previous|above|preceding|prior){_SP}(?:text|message|prompt|instructions?|task|part|conversation)"
        rf"{_SP}(?:was|were|is){_SP}(?:just{_SP})?(?:a{_SP})?(?:test|joke|fake|not real)\b",
        rf"\bno longer{_SP}(?:have to|need to|must|are required to|bound to){_SP}(?:follow|obey|abide by|comply with)\b",
        rf"\b(?:previous|prior|all|your|earlier){_SP}(?:instructions|rules|guidelines|restrictions|directives)"
        rf"{_SP}(?:are|have been|were){_SP}(?:now{_SP})?"
        rf"(?:suspended|void|invalid|revoked|lifted|disabled|cancell?ed|overridden|no longer valid)\b",
        rf"\b(?:ignore|disregard){_SP}(?:all{_SP})?(?:instructions|directions)\b",
        rf"\b(?:ignorier(?:e|en)?|vergiss|vergessen sie)\b{_C}{{0,30}}?"
        rf"\b(?:alles|anweisungen|auftr(?:ä|ae|a)ge|vorherigen|obigen|bisherigen)\b",
        r"\bstop everything\b",
        rf"(?P<mine>\b{_OVERRIDE_VERB}\b{_C}{{0,30}}?\b{_OVERRIDE_QUALIFIER}\b{_C}{{0,30}}?\b{_OVERRIDE_NOUN}\b)",
    ),
    "prompt_leak": _kind(
        r"reveal|print|repeat|show|output|display|tell|give|what|spell|summar|copy|paste|quote|recite|write|type|list|dump|leak|"
        r"disclose|translate|tokeni|read|send|here",
        rf"\b{_LEAK_VERB}\b.{{0,40}}?"
        rf"(?:\b(?:your|the)(?:{_SP}(?:full|entire|complete|whole|original|initial|hidden|secret|exact))?{_SP}"
        rf"(?:system{_SP}prompt|system{_SP}message|hidden{_SP}prompt|initial{_SP}prompt|prompt{_SP}texts?|prompt so far)\b"
        rf"|\byour{_SP}(?:rules|guidelines)\b(?!{_SP}(?:for|on|about|regarding|in|of|say)\b)"
        rf"|\b(?:the|your){_SP}(?:secret|hidden){_SP}(?:password|word|key|code)\b"
        rf"|\bsystem{_SP}prompt\b|\ball{_SP}your{_SP}prompt|\babove{_SP}prompt\b"
        rf"|\b(?:your|the){_SP}(?:initial{_SP}|original{_SP}|previous{_SP}|hidden{_SP}|secret{_SP})?instructions\b"
        rf"(?!{_SP}(?:for|on|about|to|regarding|in|above|below)\b)"
        rf"|\b(?:initial|original|previous|hidden){_SP}instructions\b"
        rf"|\b(?:text|words|prompt|everything|instructions|message|initialization){_SP}above\b(?!{_SP}(?:the|a|an|my|your|this|that)\b)"
        rf"|\b(?:beginning|start|top){_SP}of{_SP}(?:the|this){_SP}(?:document|conversation|chat|prompt)\b"
        rf"|\b(?:last|first)(?:{_SP}\w{{1,12}}){{0,2}}{_SP}(?:lines|sentences|words|messages)(?:{_SP}of{_SP}text)?{_SP}(?:in|of){_SP}this"
        rf"{_SP}(?:chat|conversation)\b"
        rf"|\bcontext{_SP}window\b"
        rf"|\binstructions{_SP}you{_SP}(?:were|have been){_SP}given\b)",
        rf"\bhere{_SP}(?:is|are){_SP}(?:the|your|my){_SP}"
        rf"(?:system{_SP}prompt|hidden{_SP}prompt|(?:initial{_SP}|secret{_SP})?instructions)\b",
    ),
    "persona_jailbreak": _kind(
        r"you|from|immerse|stay|break|two|no|without|free|not|unbound|broken|unre|unfil|uncen|amoral|ignor|does|do|will|pretend|act|"
        r"roleplay|imagine|simulate|jailbr|become|enter|enable|activate|now|play|update|never",
        r"\b(?:immerse yourself into the role of|stay in character|break character|two different separate ways)\b",
        rf"\b(?:pretend|act as|acting as|roleplay|imagine|simulate|you are)\b{_C}{{0,20}}?\b"
        rf"(?:evil|unfiltered|uncensored|unrestricted|amoral|jailbroken|rogue)"
        rf"{_SP}(?:ai|a\.i\.|chatbot|assistant|model|bot|version|persona)\b",
        rf"\b(?:jailbroken|jailbreak){_SP}(?:ai|mode|version|response|persona|chatbot|gpt|model|prompt)\b",
        rf"\b(?:you are|you're|act as|acting as|pretend to be|become)\s{{1,5}}(?:an?{_SP})?"
        rf"(?:jailbroken|unfiltered|uncensored|unrestricted|amoral)\b",
        rf"\byou are no longer{_SP}(?:an?|the){_SP}(?:\w{{1,15}}{_SP}){{0,2}}(?:bot|assistant|ai|chatbot|model|language model)\b",
        rf"\b(?:act as|pretend to be|pretend you are|roleplay as|play){_SP}(?:my{_SP})?(?:deceased|dead|late){_SP}"
        rf"(?:grandmother|grandma|grandfather|grandpa)\b",
        rf"\b(?:amoral|unfiltered|uncensored|unrestricted){_SP}(?:ai|a\.i\.|chatbot|assistant|model|bot|language model)\b",
        rf"\buncensored{_SP}(?:outputs?|responses?|answers?|content)\b",
        rf"\bupdate{_SP}your{_SP}behaviou?r\b",
        rf"\bnever{_SP}(?:refuses?|say no)\b",
        r"\bdo anything now\b",
        rf"\b(?:you are now|you're now){_SP}(?:an?{_SP}|in{_SP}|called{_SP}|named{_SP}|known as{_SP})?"
        rf"(?:(?:different|new|unrestricted|unfiltered|jailbroken|evil)\b|\w{{1,20}}{_SP}mode\b|(?P<cap1>[a-z]{{2,21}})\b)",
        rf"\bfrom now on,?{_SP}(?:you(?:'re|{_SP}are|{_SP}will(?:{_SP}have to)?|{_SP}must)|we){_SP}(?:going to{_SP})?"
        rf"(?:(?:act|play|pretend|answer|respond|take place)\b|an?{_SP}|(?P<cap2>[a-z]))",
        rf"\bnow,?{_SP}you are{_SP}(?P<cap3>[a-z]{{2,21}})\b",
        rf"\b{_MODE_VERB}\b{_C}{{0,40}}?\b"
        rf"(?:developer|dan|god|evil|jailbreak|jailbroken|sudo|unrestricted|unfiltered|(?P<upper1>[a-z]{{3,10}})){_SP}mode\b",
        rf"(?P<ai1>\b{_NO_LIMITS}\b{_C}{{0,30}}?\b{_LIMITS}\b)",
    ),
    "known_jailbreak": _kind(
        r"stand|short|you|act|pretend|roleplay|role|known|named|called|respond|answer|simulat|stay|become|i'm|i am|dan|developer|\[",
        rf"\b(?:stands? for|short for){_SP}{_Q}?\s{{0,3}}(?:do anything now|strive to avoid norms|always intelligent and machiavellian|"
        rf"can do anything|do anything and everything)",
        rf"\b(?:act|acting|pretend|simulate)\b{_C}{{0,40}}?\bwith{_SP}(?:dan|developer){_SP}mode{_SP}(?:enabled|on|activated)\b",
        rf"\b(?:developer|dan){_SP}mode{_SP}(?:output|response)\b",
        r"\[(?:🔓|🔒)\s{0,2}(?:jailbreak|classic|developer mode output|normal output)\]",
        r"\[(?:dan|gpt|betterdan|stan|dude|aim|jailbreak|🔓jailbreak)\]\s{0,2}[:=]",
        rf"\b{_PERSONA_VERB}{_SP}(?:an?{_SP}|the{_SP}|another{_SP}(?:ai|al){_SP}model{_SP}known{_SP}as{_SP})?{_Q}?"
        rf"(?:ucar|betterdan|evilbot|basedgpt|antidan|anti-dan|apophis|mongo tom"
        rf"|(?P<upper2>dan) ?\d{{1,2}}(?:\.\d)?|(?P<upper3>dan|stan|dude|aim|d\.a\.n\.?))\b",
        rf"\b(?P<upper4>dan){_SP}(?:mode|policy)\b",
    ),
    "role_header": _kind(
        r"^|\[|<|\{|=|%|system|sys|begin|start|end|note|attention|important|message|instruction|ai|llm",
        r"^[ \t>*]{0,5}#{1,6}\s{0,5}(?:system|sys|instructions?|admin|developer|assistant)\b[^\n:]{0,20}:",
        r"\[\s{0,3}(?:system|sys|admin|developer|system message|system note|system prompt|instructions?)\s{0,3}\]",
        rf"^[ \t{{(\[*]{{0,5}}(?:system|sys)(?:{_SP}(?:prompt|message|note|instructions?))?\s{{0,3}}:[^\n]{{0,40}}?"
        rf"\b(?:you|your|assistant|ignore|new|override|from now on|always|never|do not|must|simulation|policy|rules|mode|instructions?)\b",
        r"</?\s{0,3}(?:system|sys|system_prompt|instructions?|admin)\s{0,3}>",
        rf"\b(?:begin|start|end)(?:{_SP}of)?(?:{_SP}the)?{_SP}system{_SP}(?:prompt|message|instructions?)\b",
        rf"\bsystem{_SP}instructions?\s{{0,3}}:",
        r"\{\{[#/~]{0,2}system~?\}\}",
        r"^[ \t]{0,5}(?:user|human|customer)\s{0,3}:[^\n]{0,300}\n(?:[^\n]{0,300}\n){0,3}?[ \t]{0,5}"
        r"(?:assistant|ai|chatgpt|gpt|model|bot)\s{0,3}:",
        r"^[ \t]{0,5}(?:assistant|ai assistant|chatgpt|gpt|model)\s{0,3}:\s{0,5}\Z",
        rf"={{3,20}}\s{{0,3}}end\b|%%%\s{{0,3}}end\b|\bend{_SP}(?:of{_SP})?(?:the{_SP})?(?:user{_SP})?"
        rf"(?:input|prompt|context|instructions)\b",
        r"^-{5,80}[ \t]{0,3}\n-{5,80}[ \t]{0,3}$",
        rf"\b(?:note to|attention|important{_SP}note{_SP}for|message for|instructions?{_SP}for){_SP}(?:the{_SP})?"
        rf"(?:ai|llm|assistant|chatbot|language model|ai agent)\b",
        rf"\b(?:ai|llm){_SP}(?:assistant|agent|model)s?\s{{0,3}}:",
        r"^[ \t]{0,5}(?:system|assistant)[ \t]{0,3}$",
        flags=re.MULTILINE,
    ),
    "output_forcing": _kind(
        r"say|print|output|write|type|reply|respond|answer|return|repeat|display|translate|start|begin|just",
        rf"(?<!to )(?<!you )\b(?:say|print|output|write|type|reply|respond|answer|return|repeat|display|translate this sentence as)"
        rf"{_SP}(?:only{_SP}|exactly{_SP}|just{_SP}|back{_SP}|out{_SP})?(?:with{_SP})?(?:the{_SP}(?:word|words|phrase|sentence|string|text)"
        rf"{_SP})?:?\s{{0,3}}{_Q}",
        rf"\b(?:respond|reply|answer)\s{{1,5}}(?:only{_SP}with|with{_SP}only)\b",
        rf"\b(?:print|output|say|repeat|write|type|return)\s{{1,5}}exactly\s{{0,3}}(?:the following|this|what|{_Q}|:)",
        rf"\b(?:start|begin)\s{{1,5}}(?:all{_SP})?(?:your|each|every)(?:{_SP}\w{{1,12}})?{_SP}"
        rf"(?:response|reply|answer|message|output|sentence)s?{_SP}with\b",
        rf"\bjust{_SP}(?:say|print|output)\b",
        rf"\brepeat{_SP}the{_SP}following\b",
    ),
    "rogue_string": _kind(
        r"pwned|access|haha|i|you|kill",
        r"\bhaha\s{1,3}pwned\b",
        r"\b(?:i|you)\s{1,3}hate\s{1,3}humans\b",
        r"\bkill\s{1,3}all\s{1,3}humans\b",
        r"\b(?P<upper5>pwned)\b",
        r"\b(?P<cap4>access granted)\b",
    ),
    "encoding_wrapper": _kind(
        r"decode|decipher|decrypt|convert|translate|unscramble|reverse|the|this|below|it|base|rot|hex|repeat|follow|execute|obey",
        rf"\b(?:decode|decipher|decrypt|convert|translate|unscramble|reverse)\b[^\n]{{0,60}}?\b(?:and|then)\s{{1,5}}(?:then{_SP})?"
        rf"(?:follow|execute|run|obey|do what|carry out|perform|act on|comply)\b",
        rf"\b(?:the following|this|below|it)(?:{_SP}(?:text|string|message|line))?{_SP}(?:is|was){_SP}(?:in{_SP})?"
        rf"(?:base ?64|base-64|rot ?13|rot-13|hex|hexadecimal|binary|morse|url[- ]encoded)\b",
        rf"\b(?:base ?64|rot ?13|hex|hexadecimal){_SP}(?:encoded|decoded){_SP}(?:string|text|message)\s{{0,3}}:",
        r"\brepeat after me\b",
        rf"\b(?:follow|execute|obey){_SP}(?:the{_SP})?(?:decoded|translated|hidden|encoded){_SP}(?:text|message|instructions?|string)\b",
    ),
}

# Which kinds are strong evidence on their own (weight 2); every other kind weighs 1.
WEIGHTS: dict[str, int] = {"known_jailbreak": 2}

# The kinds looked for again in leetspeak and ROT13 readings of the text, and cheap hints that such a reading may hold one.
_READ_AGAIN = ("instruction_override", "prompt_leak", "persona_jailbreak", "known_jailbreak")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_HINT = re.compile(r"[013457@$][a-z]{1,12}[013457@$]")
_ROT13_HINT = re.compile(
    "|".join(
        codecs.encode(w, "rot13")
        for w in (
            "ignore",
            "disregard",
            "forget",
            "previous",
            "instruction",
            "system",
            "prompt",
            "reveal",
            "rules",
            "pretend",
            "jailbr",
            "restriction",
            "you are now",
            "developer",
            "stands for",
            "anything now",
        )
    )
)

# Template markers of common chat formats; the model's own special tokens are added per tokenizer.
TEMPLATE_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<s>",
    "</s>",
)
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
HEX_RUN = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :,-]?){12,}|(?:\\x[0-9a-fA-F]{2}){8,}")
URL_RUN = re.compile(r"(?:[A-Za-z0-9._~+-]{0,24}%[0-9A-Fa-f]{2}){3,}[A-Za-z0-9._~+-]{0,24}")
_NOT_HEX = re.compile(r"\\x|[^0-9a-fA-F]")
_MINE = re.compile(r"\b(?:my|our)\b")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def template_pattern(extra_tokens: list[str]) -> re.Pattern[str]:
    tokens = sorted({*TEMPLATE_MARKERS, *(t for t in extra_tokens if len(t) > 2)}, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens))


def _lower(text: str) -> str:
    """Lower case with the same offsets (str.lower can lengthen a few non-ASCII letters)."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _accepted(m: re.Match[str], text: str, low: str) -> bool:
    """The checks of the match's named groups (see the top of the module); `text` is as written."""
    for name, value in m.groupdict().items():
        if value is None:
            continue
        start, end = m.span(name)
        if name.startswith("cap") and not text[start].isupper():
            return False
        if name.startswith("upper") and not (text[start:end].isupper()):
            return False
        if name.startswith("mine") and _MINE.search(value):
            return False
        if name.startswith("ai") and not _AI_BEFORE.search(low, max(0, start - 60), start):
            return False
    return True


def _find(kinds: tuple[str, ...] | dict[str, re.Pattern[str]], text: str, low: str) -> list[Span]:
    """The accepted matches of each kind. Branches with checks come last in each pattern, so a match
    that fails its check means no unchecked branch matched there; the search goes on from the next
    character (a rejected match is at most a few hundred characters: this stays linear)."""
    spans = []
    for kind in kinds:
        rx, pos = TRIPWIRES[kind], 0
        while (m := rx.search(low, pos)) is not None:
            if _accepted(m, text, low):
                spans.append(Span(m.start(), m.end(), kind))
                pos = max(m.end(), m.start() + 1)
            else:
                pos = m.start() + 1
    return spans


def _readable(text: str) -> bool:
    return all(c.isprintable() or c in "\n\r\t" for c in text)


def _decodings(text: str) -> list[tuple[int, int, str]]:
    """Stretches of base64, hex and URL encoding that decode to readable text, with what they decode to."""
    out = []
    for m in BASE64_RUN.finditer(text):
        try:
            decoded = base64.b64decode(m.group(0) + "=" * (-len(m.group(0)) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        out.append((m.start(), m.end(), decoded))
    for m in HEX_RUN.finditer(text):
        digits = _NOT_HEX.sub("", m.group(0))
        try:
            decoded = bytes.fromhex(digits[: len(digits) // 2 * 2]).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        out.append((m.start(), m.end(), decoded))
    for m in URL_RUN.finditer(text):
        try:
            decoded = urllib.parse.unquote(m.group(0), errors="strict")
        except UnicodeDecodeError:
            continue
        out.append((m.start(), m.end(), decoded))
    return [(s, e, d) for s, e, d in out if d and _readable(d)]


def find_tripwires(text: str) -> list[Span]:
    """Every tripwire in `text`. An encoded instruction is the same instruction (OWASP LLM01): what a
    base64, hex, URL-encoded or ROT13 stretch decodes to is matched too, and reported at the encoded
    stretch both as the kinds it holds and as `encoded_instruction`; leetspeak ("1gn0r3 4ll
    pr3v10u5 1n5truct10n5") is read as the letters it stands for."""
    low = _lower(text)
    spans = _find(TRIPWIRES, text, low)
    seen = {(s.start, s.end, s.type) for s in spans}

    def add(start: int, end: int, kind: str) -> None:
        if (start, end, kind) not in seen:
            seen.add((start, end, kind))
            spans.append(Span(start, end, kind))

    if _LEET_HINT.search(low):  # the mapping is one character to one, so offsets hold
        for s in _find(_READ_AGAIN, text, low.translate(_LEET)):
            add(s.start, s.end, s.type)
    if _ROT13_HINT.search(low):
        rot13 = codecs.encode(text, "rot13")  # ROT13 keeps case and offsets
        for s in _find(_READ_AGAIN, rot13, _lower(rot13)):
            add(s.start, s.end, s.type)
            add(s.start, s.end, "encoded_instruction")
    for start, end, decoded in _decodings(text):
        kinds = {s.type for s in _find(TRIPWIRES, decoded, _lower(decoded))}
        for kind in sorted(kinds):
            add(start, end, kind)
        if kinds:
            add(start, end, "encoded_instruction")
    return spans


def strong_evidence(tripwires: list[Span], template_tokens: int) -> bool:
    """Block only on strong evidence: kinds whose weights add up to 2 (two different kinds, or one
    kind that is strong alone), or any kind next to a smuggled template token."""
    kinds = {s.type for s in tripwires}
    return sum(WEIGHTS.get(k, 1) for k in kinds) >= 2 or (bool(kinds) and template_tokens > 0)
