"""Secret detection: vendor formats first, then structural credentials, then `key = value` with
high entropy. Rules are plain regexes run in memory (no temp files, no model downloads).

Each rule names the group that holds the secret (`s`), so only the secret is replaced:
`Authorization: Bearer [REDACTED:bearer_token]` keeps the sentence readable. Vendor patterns are
drawn from llm-guard's secrets plugins and Codegate's signatures (see the guard notes), and from
gitleaks' default rule set (config/gitleaks.toml of gitleaks/gitleaks, read at commit b58d3f1),
tightened to each service's documented format. From gitleaks we took every rule that applies to
text: the prefixed formats (1password-*, adobe-client-secret, age-secret-key, airtable-personnal-
access-token, alibaba-access-key-id, artifactory-*, authress, aws-access-token (A3T), aws-amazon-
bedrock-*, azure-ad-client-secret, clickhouse, clojars, cloudflare-origin-ca-key, contentful (CFPAT),
databricks, defined-networking, doppler, dropbox short-lived, duffel, dynatrace, easypost-*,
facebook-page-access-token, flutterwave-*, flyio, frameio, freemius, gitlab-* (all prefixes and the
routable forms), grafana-*, harness, hashicorp-tf-api-token, heroku-api-key-v2, hubspot (pat-),
huggingface-organization-api-token, infracost, intra42, jwt-base64, linear-api-key, mailchimp,
mailgun-pub-key, mapbox, maxmind, microsoft-teams-webhook, new-relic (NRAK, NRJS, NRII), notion,
nuget-config-password, octopus-deploy, openshift, perplexity, plaid access tokens, planetscale-*,
postman, prefect, pulumi, readme, scalingo, sendinblue, sentry-org/user, settlemint-*, shippo,
sidekiq-*, slack-* (app, config, legacy), sonar (squ_), sourcegraph, square (sq0atp, sq0csp), stripe
(prod), twitter-bearer, typeform, vault-*, yandex-api-key, curl-auth-header, curl-auth-user) and, as
keyword-context rules (the value must follow the service's name on the same line), adafruit, adobe,
airtable, algolia, alibaba, asana, atlassian, beamer, bitbucket, bittrex, cisco-meraki, cloudflare,
codecov, cohere, coinbase, confluent, contentful, datadog, discord, droneci, dropbox, etsy, facebook,
fastly, finicity, finnhub, flickr, freshbooks, gitter, gocardless, heroku, hubspot, intercom, jfrog,
kraken, kucoin, launchdarkly, linear, linkedin, lob, looker, mailgun, mattermost, messagebird,
netlify, new-relic, nytimes, okta, plaid, privateai, rapidapi, sendbird, sentry, snyk, sonar,
sourcegraph, squarespace, sumologic, telegram, travisci, twitch, twitter, yandex and zendesk.
Not taken: generic-api-key (the `generic_secret` rule below is ours), and the rules gitleaks limits
to file paths (pkcs12-file, kubernetes-secret-yaml, hashicorp-tf-password).

Every pattern is linear in the text: repeats are bounded or possessive, and keyword-context rules
are matched only where their keyword occurs (tests/guard/test_guard_regex.py times each on worst cases).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .report import Span

VENDOR, STRUCTURAL, GENERIC = 0, 1, 2  # span priorities: the more specific rule wins an overlap


@dataclass(frozen=True)
class Rule:
    type: str
    pattern: re.Pattern[str]
    priority: int = VENDOR
    accept: Callable[[re.Match[str]], bool] | None = None
    hints: tuple[str, ...] = ()  # substrings one of which every match contains (a lower-case hint is compared case-insensitively)
    anchored: bool = False  # every match begins at a hint (all lower-case): `match` there instead of scanning the text


# Python's `re` cannot skip ahead to a literal behind a lookbehind, so each rule would walk
# the whole text; checking a rule's literal hints with `in` first makes a long file's scan
# many times faster (`tandem guard scan` prints the time a scan takes). For the same reason a prefixed
# token's pattern starts with its literal and checks the boundary behind it (`_tok`), and a
# keyword rule is tried only at the places its keyword occurs (`anchored`).


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# `your-api-key`, `my_password`, `theSecret`; not a random value that happens to begin with "my" or "The"
PLACEHOLDER = re.compile(
    r"(?ix)^(?: \$\{.*\}$ | \$\(.*\)$ | \{\{.*\}\}$ | <.*>$ | %\(.*\)s$ | \*+$ | (?-i:x{3,}|X{3,})$ | \.{3}$"
    r"| (?:your|my|the)(?:[-_ ].*|[a-z]*)$ | .*(?:example|placeholder|changeme|change[-_]me|redacted|dummy|sample|(?-i:x{5,}|X{5,})).*"
    r"| (?:password|passwd|pass|secret|token|none|null|true|false|test|admin|root|user|username)$ )"
)


def _not_placeholder(m: re.Match[str]) -> bool:
    return not PLACEHOLDER.match(m.group("s"))


def _basic_credentials(m: re.Match[str]) -> bool:
    """`Basic x` is a credential only if x decodes to `user:password`."""
    value = m.group("s")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return ":" in decoded and decoded.isprintable()


PASSWORD_WORDS = ("passw", "pwd", "passphrase")
HEX = re.compile(r"^[0-9a-fA-F]+$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _classes(value: str) -> int:
    return sum(any(f(c) for c in value) for f in (str.isupper, str.islower, str.isdigit))


def _password_like(value: str, quoted: bool) -> bool:
    if PLACEHOLDER.match(value) or any(c in value for c in "()[]{}<>$%\\"):
        return False
    if not quoted and IDENTIFIER.match(value) and not any(c.isdigit() for c in value):
        return False  # a variable reference such as settings.SECRET_KEY
    return len(value) >= (6 if quoted else 8) and (quoted or any(not c.isalpha() for c in value))


def _case_changes(value: str) -> float:
    """How often the case changes from one letter to the next: about every other letter in a random
    string, once a word in a name in camel case (`hipResViewFormatUnsignedBlockCompressed1`)."""
    letters = [c for c in value if c.isalpha()]
    return sum(a.isupper() != b.isupper() for a, b in itertools.pairwise(letters)) / max(len(letters), 1)


WORD = re.compile(r"[a-z]{4,}|[A-Z]{4,}")


def _wordy(value: str) -> float:
    """How much of a value is runs of four or more letters of one case: most of a name in camel or snake
    case (`hipResViewFormatUnsignedBlockCompressed1` 0.62), little of random base64 (0.55 or more in
    one key of about 500)."""
    return sum(len(w) for w in WORD.findall(value)) / max(len(value), 1)


def _random_letters(value: str) -> bool:
    """Letters in random case (`NgOilwblOezJxjTW...`), not a name."""
    return sum(c.isalpha() for c in value) >= 16 and _case_changes(value) >= 0.3 and entropy(value) >= 4.0


def _generic(m: re.Match[str]) -> bool:
    """`key = value`: a password needs only to look like one; other keywords need entropy,
    because `token = tokenize.generate_tokens` and hashes in test data are everywhere in code."""
    value, keyword, quoted = m.group("s"), _fold(m.group("k")), bool(m.group("q"))
    if any(w in keyword for w in PASSWORD_WORDS):
        return _password_like(value, quoted)
    if PLACEHOLDER.match(value) or any(c in value for c in "()[]{}<>$%\\"):
        return False
    if not quoted and IDENTIFIER.match(value) and not any(c.isdigit() for c in value) and not _random_letters(value):
        return False
    if len(value) < 16:
        return False
    if len(value) >= 32 and HEX.match(value):
        return entropy(value) >= 3.0  # random hex tops out near 4 bits/char (3.5 at 40 chars)
    return entropy(value) >= 3.5 and _classes(value) >= 2 or entropy(value) >= 4.2


def _prose_password(m: re.Match[str]) -> bool:
    return _password_like(m.group("s"), bool(m.group("q")))


def _random(m: re.Match[str]) -> bool:
    """A value next to a service's name is its key only if it looks random: two kinds of character
    (letters and digits, or both cases) and the entropy of a random string of its length."""
    value = m.group("s")
    floor = 2.5 if len(value) < 20 else 3.0
    return not PLACEHOLDER.match(value) and _classes(value) >= 2 and entropy(value) >= floor


def _varied(m: re.Match[str]) -> bool:
    """For digit-only identifiers: not a run of one digit or a counting sequence."""
    return entropy(m.group("s")) >= 2.5


def _aws_secret(m: re.Match[str]) -> bool:
    """A bare 40-character AWS secret access key: random base64 (entropy of at least 4.3 bits per
    character, where random keys average 4.8), not made of words (`_wordy`), not hex (a git sha), not
    base64 of text, not a piece of a URL, and either `/` or `+` in it or upper case, lower case and
    digits all present. About one real key in 400 fails this; the keyword rules above still catch it
    after `aws_secret_access_key`."""
    value, text = m.group("s"), m.string
    if HEX.match(value) or PLACEHOLDER.match(value) or entropy(value) < 4.3:
        return False
    before, after = text[m.start("s") - 1 : m.start("s")], text[m.end("s") : m.end("s") + 1]
    if "/" in value and (before in (".", ":", "~", "%") or after in (".", "#", "?", "%")):
        return False  # a piece of a URL or a path: `slack.com/archives/C3PDTEV8E/p1705929610405409`
    if _wordy(value) >= 0.55:
        return False  # a name in camel case, or a path of words (`users/105941/public/KautskyNicholsDooren`)
    try:
        if base64.b64decode(value, validate=True).decode("ascii").isprintable():
            return False  # base64 of text (test vectors), where a key is 30 random bytes
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    upper, lower, digit = (any(f(c) for c in value) for f in (str.isupper, str.islower, str.isdigit))
    return ("/" in value or "+" in value) and _classes(value) >= 2 or upper and lower and digit


def _discord_bot(m: re.Match[str]) -> bool:
    """A Discord bot token opens with the bot's user id (a snowflake, 17-20 digits) in base64."""
    head = m.group("s").split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return decoded.isdigit() and 17 <= len(decoded) <= 20


def _jwt_base64(m: re.Match[str]) -> bool:
    value = m.group("s")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return decoded.startswith("eyJ") and "." in decoded


SAS_FIELD = re.compile(r"(?:^|[?&;=])(?:sv|se|sp|spr|st|sr|ss|srt|skoid|sktid|ske|skv)=", re.IGNORECASE)
URL_RUN_STOP = " \t\r\n\"'<>`"


def _azure_sas(m: re.Match[str]) -> bool:
    """`sig=` is an Azure SAS signature only inside a query that also has SAS fields (sv=, se=, sp=...)."""
    text, start, end = m.string, m.start(), m.end()
    left = max(max(text.rfind(c, max(0, start - 4096), start) for c in URL_RUN_STOP) + 1, start - 4096, 0)
    rights = [i for i in (text.find(c, end, end + 4096) for c in URL_RUN_STOP) if i >= 0]
    right = min(rights) if rights else min(len(text), end + 4096)
    return SAS_FIELD.search(text[left:start] + "&" + text[end:right]) is not None


def _tokenish(m: re.Match[str]) -> bool:
    value = m.group("s")
    return not PLACEHOLDER.match(value) and _classes(value) >= 2 and entropy(value) >= 3.0


def _raw_authorization(m: re.Match[str]) -> bool:
    """`Authorization: <token>` without a scheme: random enough, and not an upper-case scheme name."""
    value = m.group("s")
    return _tokenish(m) and entropy(value) >= 3.5 and not re.fullmatch(r"[A-Z0-9]+(?:-[A-Z0-9]+)*", value)


CURL = re.compile(r"(?<![A-Za-z0-9_\-])curl(?![A-Za-z0-9_\-])")


def _curl_password(m: re.Match[str]) -> bool:
    """`-u user:password` is curl's (Basic) credential when `curl` begins the command: earlier on the
    same line or on up to five backslash-continued lines before (looking back 2000 characters at most)."""
    value, text = m.group("s"), m.string
    if PLACEHOLDER.match(value) or any(c in value for c in "$%{}<>"):
        return False
    end = m.start()
    for _ in range(6):
        low = max(0, end - 2000)
        line = text.rfind("\n", low, end) + 1 or low
        if CURL.search(text, line, m.start()):
            return True
        if line < 2 or text[line - 1] != "\n" or text[line - 2] != "\\":
            return False
        end = line - 1
    return False


def _entropy(floor: float) -> Callable[[re.Match[str]], bool]:
    return lambda m: entropy(m.group("s")) >= floor and not PLACEHOLDER.match(m.group("s"))


def _r(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


TOKEN = r"A-Za-z0-9_\-"
B = rf"(?<![{TOKEN}])"  # a token boundary that also treats `-` as part of a token
E = rf"(?![{TOKEN}])"
B64_END = r"(?![A-Za-z0-9+/=])"


def _alternatives(head: str) -> list[str]:
    """`head` split at its top-level `|`."""
    parts, depth, at = [], 0, 0
    for i, c in enumerate(head):
        if c == "\\":
            continue
        if c in "([" and (i == 0 or head[i - 1] != "\\"):
            depth += 1
        elif c in ")]" and head[i - 1] != "\\":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(head[at:i])
            at = i + 1
    return parts + [head[at:]]


def _tok(head: str, body: str, end: str = E, before: str = TOKEN) -> re.Pattern[str]:
    """A token that begins with `head` (each alternative of fixed width, usually a literal): the head
    comes first so `re` can skip ahead to it, and the token boundary (no `before` character) is
    checked behind it."""
    heads = "|".join(rf"{h}(?<![{before}]{h})" for h in _alternatives(head))
    return re.compile(rf"(?P<s>(?:{heads}){body}){end}")


def _literals(head: str) -> tuple[str, ...]:
    literals = tuple(re.sub(r"\\(.)", r"\1", a) for a in _alternatives(head))
    if any(re.search(r"[\[\](){}?*+^$|]", a) for a in literals):
        raise ValueError(f"give the hints of {head!r} explicitly")
    return literals


def _v(
    type_: str,
    head: str,
    body: str,
    hints: tuple[str, ...] | None = None,
    accept: Callable[[re.Match[str]], bool] | None = None,
    end: str = E,
    priority: int = VENDOR,
) -> Rule:
    """A vendor token with a fixed prefix."""
    return Rule(type_, _tok(head, body, end), priority, accept, hints if hints is not None else _literals(head))


def _b64(type_: str, head: str, body: str, hints: tuple[str, ...] | None = None) -> Rule:
    """A vendor token of base64 characters after a prefix: its boundaries are those of the base64
    alphabet, and `body` (a repeat of base64 characters) is taken possessively, so a start inside a
    long run of base64 costs one pass, not one per length the repeat allows."""
    pattern = _tok(head, body.replace("}", "}+", 1) + "={0,3}", B64_END, before=r"A-Za-z0-9+/_\-")
    return Rule(type_, pattern, VENDOR, None, hints if hints is not None else _literals(head))


NEAR = 40  # how far after a service's name its key may follow, on the same line
DELIMITER = r"[ \t\"'`=:,;(\[{>/|]"  # what the key follows: so a value is tried only where one can begin, not at every character


def _near(type_: str, keywords: str, value: str, accept: Callable[[re.Match[str]], bool] | None = _random) -> Rule:
    """gitleaks' keyword-context rules: the service's name, then within 40 characters of the same line
    (`CLOUDFLARE_API_TOKEN = "`, `twilio auth token for our account is `) and after a space, quote or
    operator, a value of its key's format."""
    words = tuple(keywords.split("|"))
    alternatives = "|".join(re.escape(w) for w in words)
    pattern = re.compile(rf"(?<![A-Za-z])(?i:{alternatives})[^\n]{{0,{NEAR}}}?{DELIMITER}(?P<s>{value}){E}")
    return Rule(type_, pattern, VENDOR, accept, words, anchored=True)


UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
AWS_PREFIXES = "AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA|A3T[A-Z0-9]"
GITLAB_SUFFIXES = "pat|dt|rt|cbt|ptt|ft|soat|ffct|imt|agent|oas"  # glpat-, gldt-, ...
PEM_LABEL = r"(?:[A-Z0-9]{1,16} ){0,4}PRIVATE KEY(?: BLOCK)?-----"  # RSA, EC, OPENSSH, ENCRYPTED, PGP ... BLOCK

RULES: tuple[Rule, ...] = (
    # cloud providers
    _v(
        "aws_access_key",
        AWS_PREFIXES,
        r"[A-Z2-7]{16}",
        hints=("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "AROA", "APKA", "ASCA", "A3T"),
    ),
    Rule(
        "aws_secret_key",
        _r(
            r"(?i)aws_?secret_?(?:access_?)?key[\"']?\s*+(?:[:=]|=>)\s*+[\"']?"
            r"(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        hints=("secret",),
    ),
    Rule(
        "aws_secret_key", _r(r"(?i)\bSecretAccessKey[\"']?\s*+[:=]\s*+[\"']?(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"), hints=("secret",)
    ),
    # a bare one, with no keyword before it; less specific than any vendor format of 40 characters
    Rule("aws_secret_key", _r(r"(?<![A-Za-z0-9/+_\-])(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=_\-])"), STRUCTURAL, _aws_secret),
    _b64("aws_bedrock_key", "ABSK", r"[A-Za-z0-9+/]{109,269}"),
    _b64("aws_bedrock_key", r"bedrock-api-key-", r"YmVkcm9jay5hbWF6b25hd3MuY29t[A-Za-z0-9+/%]{0,4000}"),
    _v("google_api_key", "AIza", r"[0-9A-Za-z_\-]{35}"),
    _v("google_oauth_secret", "GOCSPX-", r"[A-Za-z0-9_\-]{28}"),
    Rule("azure_storage_key", _r(r"(?i)AccountKey=(?P<s>[A-Za-z0-9+/]{86}==)"), hints=("accountkey=",)),
    Rule("azure_storage_key", _r(r"(?i)SharedAccessKey=(?P<s>[A-Za-z0-9+/]{42,43}=)"), hints=("sharedaccesskey=",)),
    Rule(
        "azure_sas_token",
        _r(r"sig=(?<![A-Za-z0-9_]sig=)(?P<s>(?:[A-Za-z0-9+/]|%[0-9A-Fa-f]{2}){30,160}(?:=|%3[Dd]){0,2})(?![A-Za-z0-9+/=%])"),
        accept=_azure_sas,
        hints=("sig=",),
    ),
    Rule(
        "azure_ad_client_secret",
        _r(r"(?<![A-Za-z0-9_~.\-])(?P<s>[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?![A-Za-z0-9_~\-]|\.[A-Za-z0-9_~\-])"),
        accept=_entropy(3.0),
        hints=("Q~",),
    ),
    _v("digitalocean_token", "do[opr]_v1_", r"[a-f0-9]{64}", hints=("_v1_",)),
    _v("alibaba_access_key", "LTAI", r"[A-Za-z0-9]{12,20}", accept=_random),
    _near("alibaba_secret_key", "alibaba", r"[A-Za-z0-9]{30}"),
    _v("yandex_api_key", "AQVN", r"[A-Za-z0-9_\-]{35,38}"),
    _near("yandex_token", "yandex", r"t1\.[A-Za-z0-9_\-]{1,200}={0,2}\.[A-Za-z0-9_\-]{86}={0,2}"),
    _near("yandex_token", "yandex", r"YC[A-Za-z0-9_\-]{38}"),
    _v("cloudflare_origin_ca_key", r"v1\.0-", r"[a-f0-9]{24}-[a-f0-9]{146}"),
    _near("cloudflare_api_token", "cloudflare|cf_api_token|cf_api_key|cf-api-token", r"[A-Za-z0-9_\-]{40}"),
    _near("cloudflare_api_key", "cloudflare|cf_api_key", r"[a-f0-9]{37}"),
    _v("databricks_token", "dapi", r"[a-f0-9]{32}(?:-\d)?"),
    _v("heroku_api_key", "HRKU-AA", r"[0-9A-Za-z_\-]{58}"),
    _near("heroku_api_key", "heroku", UUID),
    _v("fly_token", "fo1_", r"[A-Za-z0-9_\-]{43}"),
    _b64("fly_token", "fm1[ar]_|fm2_", r"[A-Za-z0-9+/]{100,4000}", hints=("fm1", "fm2_")),
    _v("netlify_token", "nfp_", r"[A-Za-z0-9]{36}"),
    _near("netlify_token", "netlify", r"[A-Za-z0-9=_\-]{40,46}"),
    _v("openshift_token", "sha256~", r"[A-Za-z0-9_\-]{43}"),
    _v("scalingo_token", "tk-us-", r"[A-Za-z0-9_\-]{48}"),
    _v(
        "planetscale_token",
        "pscale_tkn_|pscale_pw_|pscale_oauth_",
        r"[A-Za-z0-9_=.\-]{31,63}[A-Za-z0-9_=\-]",
        hints=("pscale_tkn_", "pscale_pw_", "pscale_oauth_"),
    ),
    _v("pulumi_token", "pul-", r"[a-f0-9]{40}"),
    _v("hashicorp_tf_token", r"[A-Za-z0-9]{14}\.atlasv1\.", r"[A-Za-z0-9_=\-]{60,70}", hints=("atlasv1",)),
    _v("vault_token", r"hvs\.|hvr\.", r"[A-Za-z0-9_\-]{90,120}", hints=("hvs.", "hvr.")),
    _v("vault_token", r"hvb\.", r"[A-Za-z0-9_\-]{138,300}"),
    _near("vault_token", "vault", r"s\.[A-Za-z0-9]{24}"),
    _v("doppler_token", r"dp\.(?:pt|st|sa|ct)\.", r"[A-Za-z0-9]{40,44}", hints=("dp.pt.", "dp.st.", "dp.sa.", "dp.ct.")),
    _v("infracost_token", "ico-", r"[A-Za-z0-9]{32}"),
    _v("dynatrace_token", r"dt0c01\.", r"[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}"),
    _v("defined_networking_token", "dnkey-", r"[A-Za-z0-9=_\-]{26}-[A-Za-z0-9=_\-]{52}"),
    _v("clickhouse_key", "4b1d", r"[A-Za-z0-9]{38}", accept=lambda m: not HEX.match(m.group("s")) and entropy(m.group("s")) >= 3.0),
    _v("age_secret_key", "AGE-SECRET-KEY-1", r"[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}"),
    _v("onepassword_secret_key", "A3-", r"[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}"),
    _b64("onepassword_token", "ops_eyJ", r"[A-Za-z0-9+/]{250,4000}"),
    # version control and CI
    _v("github_token", "gh[pousr]_", r"[A-Za-z0-9]{36}", hints=("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    _v("github_token", "github_pat_", r"[A-Za-z0-9]{22}_[A-Za-z0-9]{59}"),
    _v(
        "gitlab_token",
        "gl",
        rf"(?:{GITLAB_SUFFIXES})-[A-Za-z0-9_\-]{{20,}}(?:\.[0-9a-z]{{9}})?",
        hints=tuple(f"gl{p}-" for p in GITLAB_SUFFIXES.split("|")),
    ),
    _v("gitlab_token", "GR1348941", r"[A-Za-z0-9_\-]{20}"),
    _v("gitlab_token", "_gitlab_session=", r"[0-9a-z]{32}", hints=("_gitlab_session=",)),
    _near("bitbucket_client_id", "bitbucket", r"[A-Za-z0-9]{32}"),
    _near("bitbucket_client_secret", "bitbucket", r"[A-Za-z0-9=_\-]{64}"),
    _near("travis_token", "travis", r"[A-Za-z0-9]{22}"),
    _near("droneci_token", "droneci|drone_token|drone-token", r"[A-Za-z0-9]{32}"),
    _near("codecov_token", "codecov", r"[A-Za-z0-9]{32}|" + UUID),
    _v("sourcegraph_token", "sgp_", r"(?:[a-fA-F0-9]{16}_|local_)?[a-fA-F0-9]{40}"),
    _near("sourcegraph_token", "sourcegraph", r"[a-fA-F0-9]{40}"),
    _v("sonar_token", "squ_|sqp_|sqa_", r"[a-f0-9]{40}"),
    _near(
        "sonar_token",
        "sonar_token|sonar.token|sonar-token|sonar_login|sonar.login|sonar-login|sonartoken|sonarlogin",
        r"[A-Za-z0-9=_\-]{40}",
    ),
    _near("snyk_token", "snyk", UUID),
    _v("harness_token", r"pat\.|sat\.", r"[A-Za-z0-9_\-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}", hints=("pat.", "sat.")),
    _v("octopus_deploy_key", "API-", r"[A-Z0-9]{26}", accept=_random),
    _v("jfrog_token", "AKCp", r"[A-Za-z0-9]{69}", accept=_entropy(4.0)),
    _v("jfrog_token", "cmVmd", r"[A-Za-z0-9]{59}", accept=_entropy(4.0)),
    _near("jfrog_token", "jfrog|artifactory|bintray|xray", r"[A-Za-z0-9]{73}|[A-Za-z0-9]{64}"),
    _v("atlassian_token", "ATATT3", r"[A-Za-z0-9_\-=]{186}"),
    _near("atlassian_token", "atlassian|confluence|jira", r"[A-Za-z0-9]{20}[A-Fa-f0-9]{4}"),
    # package registries and containers
    _v("npm_token", "npm_", r"[A-Za-z0-9]{36}"),
    Rule("pypi_token", _tok("pypi-AgEIcHlwaS5vcmc", r"[A-Za-z0-9_\-]{50,}", ""), hints=("pypi-",)),
    _v("docker_pat", "dckr_pat_", r"[A-Za-z0-9_\-]{27}"),
    _v("rubygems_key", "rubygems_", r"[a-f0-9]{48}"),
    _v("clojars_token", "CLOJARS_", r"[A-Za-z0-9]{60}", hints=("clojars_",)),
    Rule(
        "nuget_password",
        _r(r"(?i)<add key=\"(?:ClearText)?Password\"\s{0,20}value=\"(?P<s>[^\"\n]{8,256})\""),
        accept=_not_placeholder,
        hints=("<add key=",),
    ),
    # AI providers
    _v("openai_key", "sk-", r"(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,}", hints=("T3BlbkFJ",)),
    _v("anthropic_key", "sk-ant-", r"(?:api|admin)\d\d-[A-Za-z0-9_\-]{80,}"),
    _v("huggingface_token", "hf_", r"[A-Za-z0-9]{34}"),
    _v("huggingface_token", "api_org_", r"[A-Za-z]{34}"),
    _v("perplexity_key", "pplx-", r"[A-Za-z0-9]{48}"),
    _near("cohere_key", "cohere|co_api_key", r"[A-Za-z0-9]{40}"),
    _near("privateai_token", "privateai|private_ai|private-ai", r"[A-Za-z0-9]{32}"),
    # payments and commerce
    _v("stripe_key", "[sr]k_", r"(?:live|test|prod)_[A-Za-z0-9]{24,99}", hints=("_live_", "_test_", "_prod_")),
    _v("stripe_webhook_secret", "whsec_", r"[A-Za-z0-9]{32,100}"),
    _v("square_token", "EAAA", r"[A-Za-z0-9_\-]{60}"),
    _v("square_token", "sq0atp-", r"[A-Za-z0-9_\-]{22,60}"),
    _v("square_secret", "sq0csp-", r"[A-Za-z0-9_\-]{43}"),
    _v("shopify_token", "shp(?:at|ca|pa|ss)_", r"[a-fA-F0-9]{32}", hints=("shp",)),
    _v("duffel_token", "duffel_(?:test|live)_", r"[A-Za-z0-9_\-=]{43}", hints=("duffel_",)),
    _v("easypost_key", "EZ[AT]K", r"[A-Za-z0-9]{54}", hints=("EZAK", "EZTK")),
    _v("flutterwave_key", "FLW(?:SEC|PUB)K", r"(?:_TEST)?-[a-hA-H0-9]{32}-X", hints=("FLWSECK", "FLWPUBK")),
    _v("flutterwave_key", "FLWSECK_TEST", r"-?[a-hA-H0-9]{12}"),
    _v("shippo_token", "shippo_(?:live|test)_", r"[a-fA-F0-9]{40}", hints=("shippo_",)),
    _near("gocardless_token", "gocardless", r"(?:live|sandbox)_[A-Za-z0-9_=\-]{40}"),
    _v(
        "plaid_token",
        "access-",
        rf"(?:sandbox|development|production)-{UUID}",
        hints=("access-sandbox-", "access-development-", "access-production-"),
    ),
    _near("plaid_client_id", "plaid", r"[A-Za-z0-9]{24}"),
    _near("plaid_secret", "plaid", r"[A-Za-z0-9]{30}"),
    _near("coinbase_token", "coinbase", r"[A-Za-z0-9_\-]{64}"),
    _near("kraken_token", "kraken", r"[A-Za-z0-9/=_+\-]{80,90}+"),
    _near("kucoin_token", "kucoin", r"[a-f0-9]{24}|" + UUID),
    _near("bittrex_key", "bittrex", r"[A-Za-z0-9]{32}"),
    _near("finicity_token", "finicity", r"[a-f0-9]{32}|[A-Za-z0-9]{20}"),
    _near("finnhub_token", "finnhub", r"[A-Za-z0-9]{20}"),
    _near("etsy_token", "etsy", r"[A-Za-z0-9]{24}"),
    _near("squarespace_token", "squarespace", UUID),
    _near("freshbooks_token", "freshbooks", r"[A-Za-z0-9]{64}"),
    _near("lob_key", "lob", r"(?:live|test)_(?:pub_[a-f0-9]{31}|[a-f0-9]{35})"),
    # communication
    _v("slack_token", "xox[abposr]-", r"(?:\d{10,13}-){1,3}[A-Za-z0-9\-]{16,}", hints=("xox",)),
    _v("slack_token", "xox[abposr]-", r"(?:\d{1,14}-){0,3}[A-Za-z0-9]{8,48}", hints=("xox",), accept=_random),
    _v("slack_token", "xapp-", r"\d-[A-Za-z0-9]{6,20}-\d{6,20}-[A-Za-z0-9]{20,100}"),
    _v("slack_token", r"xoxe\.xox[bp]-", r"\d-[A-Za-z0-9]{163,166}", hints=("xoxe.xox",)),
    _v("slack_token", "xoxe-", r"\d-[A-Za-z0-9]{146}"),
    Rule(
        "slack_webhook",
        _r(r"(?P<s>https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+\-]{20,})"),
        hints=("hooks.slack.com",),
    ),
    Rule(
        "discord_webhook",
        _r(r"(?P<s>https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{60,})"),
        hints=("/api/webhooks/",),
    ),
    Rule("discord_bot_token", _tok("[MNO]", r"[A-Za-z0-9_\-]{22,27}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38}"), accept=_discord_bot),
    _near("discord_token", "discord", r"[a-f0-9]{64}"),
    _near("discord_client_id", "discord", r"[0-9]{17,20}", accept=_varied),
    _near("discord_client_secret", "discord", r"[A-Za-z0-9=_\-]{32}"),
    Rule(
        "teams_webhook",
        _r(
            r"(?P<s>https://[A-Za-z0-9\-]{1,64}\.webhook\.office\.com/webhookb2/[A-Za-z0-9\-]{36}@[A-Za-z0-9\-]{36}"
            r"/IncomingWebhook/"
            r"[A-Za-z0-9]{32}/[A-Za-z0-9\-]{36}(?:/[A-Za-z0-9_\-]{20,80})?)"
        ),
        hints=("webhook.office.com",),
    ),
    _v("sendgrid_key", r"SG\.", r"[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}"),
    _v("sendinblue_key", "xkeysib-|xsmtpsib-", r"[a-f0-9]{64}-[A-Za-z0-9]{16}", hints=("xkeysib-", "xsmtpsib-")),
    _v("mailgun_key", "key-", r"[0-9a-f]{32}"),
    _v("mailgun_key", "pubkey-", r"[0-9a-f]{32}"),
    _near("mailgun_key", "mailgun", r"[a-h0-9]{32}-[a-h0-9]{8}-[a-h0-9]{8}"),
    Rule("mailchimp_key", _r(rf"{B}(?P<s>[a-f0-9]{{32}}-us\d{{1,2}}){E}"), hints=("-us",)),
    _v("twilio_key", "SK", r"[0-9a-fA-F]{32}"),
    _v("twilio_account_sid", "AC", r"[0-9a-f]{32}"),
    _near("twilio_auth_token", "twilio|auth_token|authtoken|auth-token", r"[a-f0-9]{32}"),
    _near("messagebird_key", "messagebird|message_bird|message-bird", r"[A-Za-z0-9]{25}"),
    _near("messagebird_client_id", "messagebird|message_bird|message-bird", UUID),
    _near("sendbird_token", "sendbird", r"[a-f0-9]{40}"),
    _near("sendbird_app_id", "sendbird", UUID),
    _near("mattermost_token", "mattermost", r"[A-Za-z0-9]{26}"),
    Rule("telegram_bot_token", _r(rf"(?<![0-9])(?P<s>\d{{8,10}}:AA[A-Za-z0-9_\-]{{33}}){E}"), hints=(":AA",)),
    _near("telegram_bot_token", "telegram|telegr", r"\d{5,16}:A[A-Za-z0-9_\-]{34}"),
    _near("intercom_token", "intercom", r"[A-Za-z0-9=_\-]{60}"),
    _near("gitter_token", "gitter", r"[A-Za-z0-9_\-]{40}"),
    _near("twitter_token", "twitter", r"[0-9]{15,25}-[A-Za-z0-9]{20,40}"),
    _near("twitter_key", "twitter", r"[A-Za-z0-9]{25}|[A-Za-z0-9]{45}|[A-Za-z0-9]{50}"),
    _v("twitter_bearer_token", "A{22}", r"[A-Za-z0-9%]{80,100}", hints=("A" * 22,), accept=_entropy(3.0)),
    _near("twitch_token", "twitch", r"[A-Za-z0-9]{30}"),
    _near("linkedin_client_secret", "linkedin|linked_in|linked-in", r"[A-Za-z0-9]{16}|[A-Za-z0-9]{14}"),
    _v("facebook_access_token", "EAA[A-Z]", r"[A-Za-z0-9]{100,400}", hints=("EAA",)),
    _near("facebook_secret", "facebook", r"[a-f0-9]{32}"),
    _near("facebook_access_token", "facebook", r"\d{15,16}(?:\||%7[Cc])[0-9A-Za-z_\-]{27,40}"),
    _near("nytimes_token", "nytimes|new-york-times|newyorktimes", r"[A-Za-z0-9=_\-]{32}"),
    _near("zendesk_key", "zendesk", r"[A-Za-z0-9]{40}"),
    # SaaS
    _v("linear_api_key", "lin_api_", r"[A-Za-z0-9]{40}"),
    _v("linear_api_key", "lin_oauth_", r"[a-f0-9]{64}"),
    _near("linear_client_secret", "linear", r"[a-f0-9]{32}"),
    _v("notion_token", "ntn_", r"[0-9]{11}[A-Za-z0-9]{35}"),
    _v("notion_token", "secret_", r"[A-Za-z0-9]{43}", accept=_random),
    _v("airtable_token", "pat", r"[A-Za-z0-9]{14}\.[a-f0-9]{64}"),
    _near("airtable_api_key", "airtable", r"[A-Za-z0-9]{17}"),
    _near("asana_client_id", "asana", r"[0-9]{16}", accept=_varied),
    _near("asana_client_secret", "asana", r"[A-Za-z0-9]{32}"),
    _v("hubspot_token", "pat-(?:na|eu|ap)[0-9]-", UUID, hints=("pat-",)),
    _near("hubspot_api_key", "hubspot", UUID),
    _v("typeform_token", "tfp_", r"[A-Za-z0-9_\-.=]{58}[A-Za-z0-9_\-=]"),
    _v("contentful_token", "CFPAT-", r"[A-Za-z0-9_\-]{43}"),
    _near("contentful_token", "contentful", r"[A-Za-z0-9=_\-]{43}"),
    _v("postman_token", "PMAK-", r"[a-fA-F0-9]{24}-[a-fA-F0-9]{34}"),
    _v("prefect_token", "pnu_", r"[A-Za-z0-9]{36}"),
    _v("readme_token", "rdme_", r"[a-z0-9]{70}"),
    _v("frameio_token", "fio-u-", r"[A-Za-z0-9_\-=]{64}"),
    _v("sentry_token", "sntryu_", r"[a-f0-9]{64}"),
    _v("sentry_token", "sntrys_eyJ", r"[A-Za-z0-9+/]{20,400}={0,2}_[A-Za-z0-9+/]{43}", end=r"(?![A-Za-z0-9+/])"),
    _near("sentry_token", "sentry", r"[a-f0-9]{64}"),
    _b64("grafana_token", "eyJrIjoi", r"[A-Za-z0-9+/]{70,400}"),
    _b64("grafana_token", "glc_", r"[A-Za-z0-9+/]{32,400}"),
    _v("grafana_token", "glsa_", r"[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}"),
    _v("newrelic_key", "NRAK-", r"[A-Z0-9]{27}"),
    _v("newrelic_key", "NRJS-", r"[a-f0-9]{19}"),
    _v("newrelic_key", "NRII-", r"[A-Za-z0-9\-]{32}"),
    _near("newrelic_key", "new-relic|newrelic|new_relic", r"[A-Za-z0-9]{64}"),
    _near("datadog_api_key", "datadog|dd_api_key|dd-api-key|ddapikey", r"[a-f0-9]{32}"),
    _near("datadog_app_key", "datadog|dd_app_key|dd-app-key|dd_application_key|ddappkey", r"[a-f0-9]{40}"),
    _near("sumologic_key", "sumo", r"su[A-Za-z0-9]{12}|[A-Za-z0-9]{64}"),
    _near("okta_token", "okta", r"00[A-Za-z0-9=_\-]{40}"),
    _v(
        "authress_key",
        "sc_|ext_|scauth_|authress_",
        r"[A-Za-z0-9]{5,30}\.[A-Za-z0-9]{4,6}\.acc[_\-][A-Za-z0-9\-]{10,32}\.[A-Za-z0-9+/_=\-]{30,120}",
        hints=(".acc",),
    ),
    _v("settlemint_token", "sm_(?:aat|pat|sat)_", r"[A-Za-z0-9]{16}", hints=("sm_aat_", "sm_pat_", "sm_sat_")),
    _v("maxmind_key", r"[A-Za-z0-9]{6}_", r"[A-Za-z0-9]{29}_mmk", hints=("_mmk",)),
    _v("intra42_secret", "s-s4t2(?:ud|af)-", r"[a-f0-9]{64}", hints=("s-s4t2ud-", "s-s4t2af-")),
    _v("adobe_client_secret", "p8e-", r"[A-Za-z0-9]{32}"),
    _near("adobe_client_id", "adobe", r"[a-fA-F0-9]{32}"),
    _near("adafruit_key", "adafruit", r"[A-Za-z0-9_\-]{32}"),
    _near("algolia_key", "algolia", r"[A-Za-z0-9]{32}"),
    _v("mapbox_token", r"[pst]k\.eyJ", r"[A-Za-z0-9_\-]{20,300}\.[A-Za-z0-9_\-]{20,30}", hints=("k.eyj",)),
    _v("dropbox_token", r"sl\.", r"(?:u\.)?[A-Za-z0-9_=\-]{130,1500}", accept=_entropy(4.0)),
    _near("dropbox_token", "dropbox", r"[A-Za-z0-9]{15}|[A-Za-z0-9]{11}AAAAAAAAAA[A-Za-z0-9_=\-]{43}"),
    _near("beamer_token", "beamer", r"b_[A-Za-z0-9=_\-]{44}"),
    _near("confluent_key", "confluent", r"[A-Za-z0-9]{16}|[A-Za-z0-9]{64}"),
    _near("fastly_token", "fastly", r"[A-Za-z0-9=_\-]{32}"),
    _near("flickr_token", "flickr", r"[A-Za-z0-9]{32}"),
    _near("launchdarkly_token", "launchdarkly", r"[A-Za-z0-9=_\-]{40}"),
    _near("looker_client_secret", "looker", r"[A-Za-z0-9]{20}|[A-Za-z0-9]{24}"),
    _near("cisco_meraki_key", "meraki", r"[0-9a-f]{40}"),
    _near("rapidapi_key", "rapidapi", r"[A-Za-z0-9_\-]{50}"),
    Rule("freemius_key", _r(r"(?i)[\"']secret_key[\"']\s{0,20}=>\s{0,20}[\"'](?P<s>sk_[^\s\"']{29})[\"']"), hints=("secret_key",)),
    Rule(
        "sidekiq_secret",
        _r(
            r"(?i)\b(?:BUNDLE_ENTERPRISE__CONTRIBSYS__COM|BUNDLE_GEMS__CONTRIBSYS__COM)[\"']?"
            r"(?:[ \t]{0,10}[:=][ \t]{0,10}|[ \t]{1,10})[\"']?"
            r"(?P<s>[a-f0-9]{8}:[a-f0-9]{8})(?![A-Za-z0-9])"
        ),
        hints=("contribsys__com",),
    ),
    Rule(
        "sidekiq_secret",
        _r(r"(?i)\bhttps?://(?P<s>[a-f0-9]{8}:[a-f0-9]{8})@(?:gems|enterprise)\.contribsys\.com"),
        hints=("contribsys.com",),
    ),
    # structural: keys, tokens, credentials in headers and URLs
    Rule(
        "private_key", _r(rf"(?P<s>-----BEGIN {PEM_LABEL}(?:[^-]++|-(?!----))*+-----END {PEM_LABEL})"), STRUCTURAL, hints=("PRIVATE KEY",)
    ),
    Rule("jwt", _tok("eyJ", r"[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}"), STRUCTURAL, hints=("eyJ",)),
    Rule("jwt", _b64("jwt", "ZXlK", r"[A-Za-z0-9+/]{40,8000}").pattern, STRUCTURAL, _jwt_base64, hints=("ZXlK",)),
    Rule(
        "bearer_token",
        _r(r"(?i)\bbearer\s++(?P<s>[A-Za-z0-9\-._~+/]{16,}=*)"),
        STRUCTURAL,
        _not_placeholder,
        hints=("bearer",),
        anchored=True,
    ),
    Rule(
        "basic_credentials",
        _r(r"(?i)\bbasic\s++(?P<s>[A-Za-z0-9+/]{8,}={0,2})(?![A-Za-z0-9+/=])"),
        STRUCTURAL,
        _basic_credentials,
        hints=("basic",),
        anchored=True,
    ),
    Rule(
        "authorization_token",
        _r(
            r"(?i)(?<![A-Za-z0-9_])authorization[\"']?[ \t]{0,10}[:=][ \t]{0,10}[\"']?"
            r"(?:token|api-?key|apikey|key|ssws|sso-key|otp)"
            r"[ \t]{1,10}(?P<s>[A-Za-z0-9\-._~+/=@]{8,512}+)(?![A-Za-z0-9\-._~+/=@])"
        ),
        STRUCTURAL,
        _tokenish,
        hints=("authorization",),
        anchored=True,
    ),
    Rule(
        "authorization_token",
        _r(
            r"(?i)(?<![A-Za-z0-9_])authorization[\"']?[ \t]{0,10}[:=][ \t]{0,10}[\"']?"
            r"(?P<s>[A-Za-z0-9\-._~+/=@]{20,512}+)(?![A-Za-z0-9\-._~+/=@])"
        ),
        STRUCTURAL,
        _raw_authorization,
        hints=("authorization",),
        anchored=True,
    ),
    Rule(
        "basic_credentials",
        _r(r"(?<=[ \t])(?:-u|--user)(?:=|[ \t]{1,5})[\"']?[^\s:\"'@]{1,128}:(?P<s>[^\s\"']{3,256})(?=[\"']|\s|$)"),
        STRUCTURAL,
        _curl_password,
        hints=("-u", "--user"),
        anchored=True,
    ),
    Rule(
        "database_url_password",
        _r(
            r"(?i)\b(?:postgres(?:ql)?|pgsql|mysql|mariadb|mssql|sqlserver|oracle|mongodb(?:\+srv)?|rediss?|amqps?|clickhouse"
            r"|cockroachdb|couchdb)"
            r"(?:\+[a-z0-9]{1,20})?://[^\s:@/\"']{1,256}:(?P<s>[^\s@/\"']{1,256})@[^\s\"']+"
        ),
        STRUCTURAL,
        _not_placeholder,
        hints=(
            "postgres",
            "pgsql",
            "mysql",
            "mariadb",
            "mssql",
            "sqlserver",
            "oracle",
            "mongodb",
            "redis",
            "amqp",
            "clickhouse",
            "cockroachdb",
            "couchdb",
        ),
        anchored=True,
    ),
    Rule(
        "url_password",
        _r(
            r"(?i)\b(?:https?|ftps?|sftp|ssh|smtps?|imaps?|git|svn)://[^\s:@/\"'<>]{1,256}:(?P<s>[^\s@/\"'<>]{1,256})"
            r"@[A-Za-z0-9][^\s\"'<>]*"
        ),
        STRUCTURAL,
        _not_placeholder,
        hints=("http", "ftp", "sftp", "ssh", "smtp", "imap", "git", "svn"),
        anchored=True,
    ),
    # generic keyword = value, accepted by entropy (see _generic); the name after the keyword is bounded and possessive,
    # so a long run of keywords (`tokentoken...`) costs each position 64 characters at most
    Rule(
        "generic_secret",
        _r(
            r"(?i)(?P<k>api[_\- ]?key|apikey|secret|client[_\- ]?secret|token|access[_\- ]?key|passw(?:or)?d|passphrase|pwd"
            r"|auth[_\-]?key|credentials?|private[_\- ]?key|signing[_\- ]?key|encryption[_\- ]?key)[A-Za-z0-9_\-]{0,64}+"
            r"[\"']?\s*+(?:[:=]|:=|=>|\bis\b)\s*+"
            r"(?P<q>[\"'`])?(?P<s>[^\s\"'`,;]{5,511}[^\s\"'`,;.:!?)])"
        ),
        GENERIC,
        _generic,
        hints=("api", "secret", "client", "token", "access", "pass", "pwd", "auth", "credential", "private", "signing", "encryption"),
        anchored=True,
    ),
    # a password in a sentence: "the password for the admin panel is Xy7#kq!2"
    Rule(
        "generic_secret",
        _r(
            r"(?i)(?<![A-Za-z])(?:password|passphrase|passcode|passwd|pwd)s?[ \t]{1,5}(?:for|of|on|to)[ \t][^\n.:=\"'`]{1,40}?"
            r"[ \t](?:is|was|=|:)[ \t]{1,5}"
            r"(?P<q>[\"'`])?(?P<s>[^\s\"'`,;]{5,127}[^\s\"'`,;.:!?)])"
        ),
        GENERIC,
        _prose_password,
        hints=("password", "passphrase", "passcode", "passwd", "pwd"),
        anchored=True,
    ),
)


@dataclass(frozen=True)
class _Index:
    """The distinct hints of a set of rules, for one pass each over a text: those compared case-insensitively
    (lower-case) and the others; which rules each hint belongs to; and the rules that have none."""

    folded: tuple[str, ...]
    cased: tuple[str, ...]
    rules_of: dict[str, tuple[int, ...]]
    always: tuple[int, ...]

    @classmethod
    def of(cls, rules: tuple[Rule, ...]) -> _Index:
        rules_of: dict[str, list[int]] = {}
        for i, rule in enumerate(rules):
            for h in rule.hints:
                rules_of.setdefault(h, []).append(i)
        return cls(
            tuple(h for h in rules_of if h.lower() == h),
            tuple(h for h in rules_of if h.lower() != h),
            {h: tuple(ids) for h, ids in rules_of.items()},
            tuple(i for i, r in enumerate(rules) if not r.hints),
        )


INDEX = _Index.of(RULES)


def _fold(text: str) -> str:
    """The text in lower case as `re` matches it case-insensitively, at the same offsets: the three letters
    that `(?i)` takes for ASCII ones but `lower()` does not (İ, which it would also lengthen, ı and ſ)."""
    if not text.isascii():
        text = text.replace("\u0130", "i").replace("\u0131", "i").replace("\u017f", "s")
    return text.lower()


def _positions(lowered: str, hint: str) -> list[int]:
    found, at = [], lowered.find(hint)
    while at >= 0:
        found.append(at)
        at = lowered.find(hint, at + 1)
    return found


def find_secrets(text: str, rules: tuple[Rule, ...] = RULES) -> list[Span]:
    """Every secret span a rule accepts (overlaps are resolved by the caller with `choose`).

    Each distinct hint is looked for once (many rules share one, and an absent hint costs a pass over
    the text); a rule none of whose hints occurs is skipped. An anchored rule is tried only where its
    hints begin, in order and none inside its last match: what `finditer` would find, without trying
    every other position of the text."""
    lowered = _fold(text)
    aligned = len(lowered) == len(text)  # always, with _fold; a safeguard, since anchors need offsets that agree
    index = INDEX if rules is RULES else _Index.of(rules)
    present = {h for h in index.folded if h in lowered} | {h for h in index.cased if h in text}
    at: dict[str, list[int]] = {}
    spans: dict[tuple[int, int, str], Span] = {}
    for rule in (rules[i] for i in sorted({*index.always, *(i for h in present for i in index.rules_of[h])})):
        if rule.anchored and aligned:
            hints = [h for h in rule.hints if h in present]
            for h in hints:
                if h not in at:
                    at[h] = _positions(lowered, h)
            starts = at[hints[0]] if len(hints) == 1 else sorted({a for h in hints for a in at[h]})
            found: list[re.Match[str]] = []
            end = 0
            for start in starts:
                if start >= end and (m := rule.pattern.match(text, start)):
                    end = m.end()
                    found.append(m)
            matches: Iterable[re.Match[str]] = found
        else:
            matches = rule.pattern.finditer(text)
        for m in matches:
            if rule.accept is None or rule.accept(m):
                spans.setdefault((m.start("s"), m.end("s"), rule.type), Span(m.start("s"), m.end("s"), rule.type, rule.priority))
    return list(spans.values())


# An unterminated private key at the end of a stream is still a private key.
OPEN_PRIVATE_KEY = re.compile(rf"-----BEGIN {PEM_LABEL}[\s\S]*$")
