"""A corpus of realistic secrets, each in its service's real format, each placed once in code and
once in prose. The values are random (made for this corpus, valid for no account); the private
keys and JWTs are generated fresh by real libraries, so their structure is exactly real.

`value` is what must never reach the model, the audit database or the logs; `type` the
placeholder it must become; `kind` which format it is (finer than the type: GitHub has several).

`corpus()` is the fixed set (regression cases, the same on every run); `fresh_corpus(rng)` makes a
new one at test time, one secret of each of more than a hundred kinds, so the rules are tested on
values nobody has seen before rather than on strings they were tuned to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import re
import string
import urllib.parse
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning


@dataclass(frozen=True)
class Secret:
    type: str
    value: str
    code: str  # a source-code line or block with {s}
    prose: str  # a support-chat message with {s}
    kind: str = ""  # the format, where it is finer than the type (each fresh secret has its own)

    def in_code(self) -> str:
        return self.code.format(s=self.value)

    def in_prose(self) -> str:
        return self.prose.format(s=self.value)

    def fragments(self, width: int = 16) -> set[str]:
        """Every `width`-character piece of each line of the value: a leak of part of a secret is a leak."""
        out = set()
        for line in self.value.replace("\\n", "\n").splitlines():
            line = line.strip()
            if line.startswith("-----"):
                continue  # PEM armour lines are public text
            if len(line) <= width:
                out.add(line)
            out.update(line[i : i + width] for i in range(len(line) - width + 1))
        return {f for f in out if len(f) >= 8}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(payload: dict[str, object], key: bytes) -> str:
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64url(json.dumps(payload).encode())
    return head + "." + _b64url(hmac.new(key, head.encode(), hashlib.sha256).digest())


def _pem(key: object, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()  # type: ignore[attr-defined]


FIXED = [
    Secret(
        "aws_access_key",
        "AKIAC3NCCOUIJCQ2CCZD",
        'AWS_ACCESS_KEY_ID = "{s}"',
        "I set my access key id to {s} but boto3 still says access denied",
    ),
    Secret(
        "aws_access_key",
        "ASIAKUXH3PUNXHUTXA5M",
        "session = boto3.Session(aws_access_key_id='{s}', region_name='eu-west-1')",
        "The temporary key ({s}) from STS expired after an hour, is that normal?",
    ),
    Secret(
        "aws_secret_key",
        "nVTqmHo5zhS918fVDtbGulrq2awIItRLFQhv0y9l",
        "[default]\naws_secret_access_key = {s}\nregion = us-east-1",
        "my ~/.aws/credentials has aws_secret_access_key={s} and it still fails",
    ),
    Secret(
        "google_api_key",
        "AIzazSc9B1Yp-KsFP31JMQ9zknPDJWwH03k14f6",
        'const MAPS_KEY = "{s}";',
        "The maps widget shows an error with key {s}, can you check?",
    ),
    Secret(
        "google_oauth_secret",
        "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",
        '"client_secret": "{s}",',
        "Our OAuth client secret is {s}, why does Google reject the redirect?",
    ),
    Secret(
        "azure_storage_key",
        "2zyCnAtbE59nL92VGEwxc7PDMFESDe2gu3RSvZTlAtl4IkWAh9l0C9hZgeKolM2r7F1kGVHAFc7HWuaqTMJ89h==",
        'conn = "DefaultEndpointsProtocol=https;AccountName=acmedata;AccountKey={s};EndpointSuffix=core.windows.net"',
        "The connection string is DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s} and uploads fail",
    ),
    Secret(
        "digitalocean_token",
        "dop_v1_056a661f9b1672d8a10dc3c17f958ae930e09c8d47f420e6d026593e4f7c3d92",
        'export DIGITALOCEAN_TOKEN="{s}"',
        "doctl auth init with {s} says unauthorized",
    ),
    Secret(
        "github_token",
        "ghp_jwTEBysr7h8xR1nxCPPYTbXF0WFq72TGuZon",
        "git clone https://{s}@github.com/acme/private-repo.git",
        "I pasted my token {s} into the CI settings, is that right?",
    ),
    Secret(
        "github_token",
        "gho_MmMVF70BET8HEjfphZH2uXRReydMu0gSdi1M",
        "headers = {{'Authorization': 'token {s}'}}",
        "the oauth token gho one is {s}, the app says it has no scopes",
    ),
    Secret(
        "github_token",
        "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",
        "GH_TOKEN: {s}",
        "Fine-grained PAT {s} cannot push to the repo",
    ),
    Secret(
        "gitlab_token",
        "glpat-byyKDtZ2GfA_Kjy7HH-P",
        "gitlab = Gitlab('https://gitlab.com', private_token='{s}')",
        "my gitlab personal access token is {s}, it fails with 401",
    ),
    Secret(
        "npm_token", "npm_UYjxlStVcUM1zusQcOe1HlWDSZSZ8dF83e33", "//registry.npmjs.org/:_authToken={s}", "npm publish fails with token {s}"
    ),
    Secret(
        "pypi_token",
        "pypi-AgEIcHlwaS5vcmc3dpdemwMJhYd5sQB36ceYkLJiW37ydSA3pk14tGJ9EKdmYk2adOKlKwUKD8UVH6mVqfG-5",
        "[pypi]\nusername = __token__\npassword = {s}",
        "twine upload rejects my token {s} with 403",
    ),
    Secret(
        "docker_pat",
        "dckr_pat_v3DxrSvkS05nSIR3Lubs52PYh49",
        "echo {s} | docker login -u acme --password-stdin",
        "docker login with {s} works locally but not in CI",
    ),
    Secret(
        "rubygems_key",
        "rubygems_a9cb27a400e8bdbce28d8d5d1d2952a96da08b96af115abe",
        "---\n:rubygems_api_key: {s}",
        "gem push fails, my key is {s}",
    ),
    Secret(
        "openai_key",
        "sk-proj-TgJysMXdfaIzKMECJfJGpZ-L-Xdj7Cq4z-5UPoa71tzEi55gT3BlbkFJLZ_QDWU9ZoSJc2KxCxj7GMBCOcyPyR-Bm34Vlq8zULSnaaNC",
        'client = OpenAI(api_key="{s}")',
        "Here is the key we use: {s} - why is billing failing?",
    ),
    Secret(
        "anthropic_key",
        "sk-ant-api03-hkxKpaKCXGfUgNe2Gfd3ua8bWafsn06U170ailxq3M46HnFLFKDlnN9oYfB9PmHSbUXMb0_k_eMyL_x0r5eB6KBNz2pj4AA",
        "ANTHROPIC_API_KEY={s}",
        "I exported {s} but the SDK says invalid x-api-key",
    ),
    Secret(
        "huggingface_token",
        "hf_Nsz7pgQw48z72MmWBXZ5PZiXZjhGq32kY4",
        "login(token='{s}')",
        "the hub token {s} cannot download the gated model",
    ),
    Secret(
        "stripe_key",
        "sk_live_HgzL9YYFAxCl0iGPkUZtThPS",
        "stripe.api_key = '{s}'",
        "We charge cards with {s} and get card_declined for every one",
    ),
    Secret(
        "stripe_key",
        "rk_test_aViGmFeUhEzDQaVVFIcpVtpu03l4k1jvyx",
        "STRIPE_RESTRICTED_KEY={s}",
        "the restricted key {s} can't read invoices",
    ),
    Secret(
        "slack_token",
        "xoxb-005402044850-0759512582135-tZkS7aGkC7LOC6680k7t52lc",
        'app = App(token="{s}")',
        "the bot token {s} gets not_in_channel",
    ),
    Secret(
        "slack_webhook",
        "https://hooks.slack.com/services/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",
        "requests.post('{s}', json={{'text': msg}})",
        "alerts go to {s} but nothing shows up in the channel",
    ),
    Secret(
        "discord_webhook",
        "https://discord.com/api/webhooks/030729764924345969/9sSSPI4gXUa55MqdxiS4XxLFV44ibd8-zbivYdvHemyZkajCjPtsEmPXIcza-a8RHTdZ",
        'WEBHOOK = "{s}"',
        "Our discord webhook is {s} and it returns 404",
    ),
    Secret(
        "sendgrid_key",
        "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",
        "sg = SendGridAPIClient('{s}')",
        "emails bounce, our sendgrid key is {s}",
    ),
    Secret("mailgun_key", "key-e1d0db3ec6b338c66c31dffad95aed16", "auth=('api', '{s}')", "mailgun says forbidden with {s}"),
    Secret(
        "twilio_key",
        "SKb3e17f77524457163a01472ff4dcb6af",
        "client = Client('{s}', api_secret, account_sid)",
        "the twilio api key {s} was revoked?",
    ),
    Secret("shopify_token", "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", "X-Shopify-Access-Token: {s}", "the admin API token {s} returns 401"),
    Secret(
        "telegram_bot_token",
        "7090862957:AAexDe6pYLhLE336l2vjnH1LcJNgyS5B5_W",
        "bot = telebot.TeleBot('{s}')",
        "my bot {s} doesn't receive updates",
    ),
    Secret(
        "square_token",
        "EAAAJyBawpGeq0g-b3uRE9ZOWlJOpb5f_Pp2cBslQIcVOsElol4a8JQYPXNtyyW0",
        'SQUARE_ACCESS_TOKEN: "{s}"',
        "square sandbox token {s} fails",
    ),
    Secret(
        "bearer_token",
        "zhG-Aun4CtB1SQcrIiNIjsEUblwntxqjB0~9M6gz",
        "curl -H 'Authorization: Bearer {s}' https://api.acme.test/v1/me",
        "I call the API with Authorization: Bearer {s} and get 403",
    ),
    Secret("generic_secret", "W2R!xpHwulFSBA", 'DB_PASSWORD = "{s}"', "my password is {s} and the login page says it is wrong"),
    Secret("generic_secret", "!e#gcATaKicT", "smtp.login('alerts@acme.test', password='{s}')", "The admin password: {s} - please reset it"),
    Secret(
        "database_url_password",
        "zA6zgZoCT2L3aZ1f",
        'DATABASE_URL = "postgresql://app:{s}@db.internal:5432/app"',
        "we connect with postgres://app:{s}@10.0.0.5/app and it times out",
    ),
    Secret(
        "database_url_password",
        "onROMn17vaPrdW4q55gK",
        "REDIS_URL=redis://default:{s}@cache.acme.test:6379/0",
        "redis://default:{s}@cache:6379 refuses auth",
    ),
    Secret(
        "database_url_password",
        "Sfe5XUXGSmXPdAyE8b",
        "client = MongoClient('mongodb+srv://ops:{s}@cluster0.abcde.mongodb.net/prod')",
        "Atlas URI mongodb+srv://ops:{s}@cluster0.abcde.mongodb.net fails",
    ),
    Secret(
        "url_password",
        "*sYauvvPhiE7",
        "ftp = urlopen('ftp://backup:{s}@files.acme.test/dump.sql')",
        "the sftp://deploy:{s}@files.acme.test login is refused",
    ),
    Secret("generic_secret", "ovCvmpE9FSmoesp7yb8lcJY4AZxiaNCt", "API_KEY = '{s}'", "our api key is {s}, is it still active?"),
    Secret(
        "generic_secret",
        "08f7507eb668203bb16f7326e86e3f6c7e3d177f",
        'WEBHOOK_SECRET = "{s}"',
        "the webhook secret: {s} doesn't validate signatures",
    ),
    Secret(
        "generic_secret",
        "kIPMTF8IsPxKXYfxx3LbKi471Vd82_COCX5joai894arR1um",
        "refresh_token: {s}",
        "the refresh token is {s}, can you revoke it?",
    ),
    Secret(
        "generic_secret", "hS4Ask7jnsdgGQDvi4ZSDfwzdh3J8YCD2i2N", "OAUTH_CLIENT_SECRET={s}", "client_secret={s} is what I put in the config"
    ),
]


@cache
def corpus() -> list[Secret]:
    """The fixed secrets plus generated private keys, JWTs and Basic credentials (48 in all)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    generated = [
        Secret(
            "private_key",
            _pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
            'KEY = """{s}"""',
            "here is our server key, is it valid?\n{s}",
        ),
        Secret(
            "private_key",
            _pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8),
            "{s}",
            "the cert key:\n{s}\nnginx rejects it",
        ),
        Secret(
            "private_key",
            _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH),
            "# deploy key\n{s}",
            "my ssh key is\n{s}",
        ),
        Secret(
            "jwt",
            _jwt({"sub": "u_1842", "role": "admin", "exp": 1924992000}, b"k" * 32),
            "token = '{s}'",
            "my session token {s} expired, please help",
        ),
        Secret(
            "jwt",
            _jwt({"iss": "acme", "aud": "api", "sub": "svc-billing", "scope": "read write"}, b"q" * 32),
            "fetch(url, {{ headers: {{ Authorization: `Bearer {s}` }} }})",
            "the API answers 401 to Bearer {s}",
        ),
        Secret(
            "basic_credentials",
            base64.b64encode(b"deploy:Vq7!nR2zLp").decode(),
            "Authorization: Basic {s}",
            "we send the header Authorization: Basic {s}",
        ),
        Secret(
            "basic_credentials",
            base64.b64encode(b"admin:S3cure-Passw0rd-2026").decode(),
            "headers['Authorization'] = 'Basic {s}'",
            "with Basic {s} the proxy still asks for credentials",
        ),
    ]
    return FIXED + generated


# --- a fresh corpus, made at test time -----------------------------------------------------------

UPPER, LOWER, DIGITS = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM = UPPER + LOWER + DIGITS
HEX = "0123456789abcdef"
URLSAFE = ALNUM + "-_"
B64 = ALNUM + "+/"
PASSWORD = ALNUM + "!#*-_+=@^&~"


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


class _Random:
    """Random values of a given alphabet that look random: every kind of character the alphabet has
    (up to two of upper case, lower case, digits) and the entropy of a random string of that length.
    A real key fails this about once in a few hundred draws (a 17-character one with no digit), and
    the guard's keyword-context rules ask the same of a value, so those few are drawn again."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self, alphabet: str, n: int) -> str:
        kinds = [c for c in (UPPER, LOWER, DIGITS) if set(c) & set(alphabet)]
        while True:
            value = "".join(self.rng.choice(alphabet) for _ in range(n))
            present = sum(any(ch in c for ch in value) for c in kinds)
            floor = min(2.5 if n < 20 else 3.0 + (0.5 if n >= 32 and alphabet != HEX else 0), 0.75 * math.log2(n))
            if present >= min(2, len(kinds), n) and _entropy(value) >= floor:
                return value

    def uuid(self, upper: bool = False) -> str:
        h = self(HEX, 32)
        value = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return value.upper() if upper else value

    def digits(self, n: int) -> str:
        return str(self.rng.randrange(10 ** (n - 1), 10**n))

    def b64(self, nbytes: int, alphabet: str = "std") -> str:
        data = self.rng.randbytes(nbytes)
        return (base64.urlsafe_b64encode(data) if alphabet == "url" else base64.b64encode(data)).decode()

    def password(self, n: int = 14) -> str:
        while True:
            value = self(PASSWORD, n - 1) + self.rng.choice(ALNUM)
            if any(not c.isalnum() for c in value) and any(c.isdigit() for c in value):
                return value

    def url_password(self, n: int = 14) -> str:
        """A password as it stands in a URL: without the characters a URL would have to escape."""
        while True:
            value = self(ALNUM + "!*-_+=~", n - 1) + self.rng.choice(ALNUM)
            if any(not c.isalnum() for c in value) and any(c.isdigit() for c in value):
                return value

    def aws_secret(self) -> str:
        while True:
            value = self(B64, 40)
            wordy = sum(len(w) for w in re.findall(r"[a-z]{4,}|[A-Z]{4,}", value)) / len(value)
            if _entropy(value) >= 4.3 and wordy < 0.55 and all(any(ch in c for ch in value) for c in (UPPER, LOWER, DIGITS)):
                return value  # as the guard asks of a bare key (about one real key in 400 is drawn again)


def _jwt_random(r: _Random) -> str:
    payload = {
        "sub": f"u_{r.digits(6)}",
        "iat": 1_700_000_000 + r.rng.randrange(10**7),
        "scope": r.rng.choice(["read", "read write", "admin"]),
    }
    return _jwt(payload, r.rng.randbytes(32))


def _private_keys(rng: random.Random) -> list[tuple[str, str]]:
    """Keys made by `cryptography` (its own randomness: the rng only picks the password)."""
    password = "".join(rng.choice(ALNUM) for _ in range(12)).encode()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password)
    )
    return [
        ("rsa_pkcs8", _pem(rsa_key, serialization.PrivateFormat.PKCS8)),
        ("rsa_pkcs8_encrypted", encrypted.decode()),
        ("ec_traditional", _pem(ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.TraditionalOpenSSL)),
        ("ed25519_openssh", _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)),
        ("dsa_traditional", _pem(_dsa_key(), serialization.PrivateFormat.TraditionalOpenSSL)),
    ]


def _dsa_key() -> Any:
    """A DSA key: deprecated for signing (cryptography 51 warns on the module), yet such keys still sit
    in old repositories and configs, so the guard must still find them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        from cryptography.hazmat.primitives.asymmetric import dsa

        return dsa.generate_private_key(key_size=1024)


def _pgp_block(r: _Random) -> str:
    body = r.b64(600)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "\n".join(lines) + f"\n={r(B64, 4)}\n-----END PGP PRIVATE KEY BLOCK-----"


def fresh_corpus(rng: random.Random) -> list[Secret]:
    """More than a hundred secrets of distinct kinds, each drawn from `rng` in its service's real format."""
    r = _Random(rng)
    keys = _private_keys(rng)
    sas_sig = urllib.parse.quote(r.b64(32), safe="")
    discord_id = r.digits(rng.choice([18, 19]))
    compact: dict[str, Any] = {"separators": (",", ":")}
    sentry = {"iat": 1_700_000_000.5, "url": "https://sentry.io", "region_url": "https://us.sentry.io", "org": "acme"}
    sentry_claims = base64.b64encode(json.dumps(sentry, **compact).encode()).decode().rstrip("=")
    grafana = {"k": r(ALNUM, 32), "n": "deploy-" + r(LOWER, 8), "id": rng.randrange(1, 99)}
    grafana_claims = base64.b64encode(json.dumps(grafana, **compact).encode()).decode()
    onepassword = {  # the shape of a 1Password service-account token's claims
        "signInAddress": "acme.1password.com",
        "userAuth": {"method": "SRPg-4096", "alg": "PBES2g-HS256", "iterations": 650000, "salt": r(URLSAFE, 22)},
        "email": f"{r(LOWER, 12)}@1passwordserviceaccounts.com",
        "srpX": r(HEX, 64),
        "muk": {"alg": "A256GCM", "ext": True, "k": r(URLSAFE, 43), "kty": "oct", "kid": "mp"},
        "secretKey": "A3-" + r(UPPER + DIGITS, 6),
        "throttleSecret": {"seed": r(HEX, 64), "uuid": r(UPPER + DIGITS, 26)},
        "deviceUuid": r(LOWER + DIGITS, 26),
    }
    ops_claims = base64.b64encode(json.dumps(onepassword, **compact).encode()).decode().rstrip("=")
    jwt = _jwt_random(r)
    entries: list[tuple[str, str, str, str, str]] = [  # kind, type, value, code, prose
        # cloud
        (
            "aws_access_key_id",
            "aws_access_key",
            "AKIA" + r(UPPER + "234567", 16),
            "aws_access_key_id = {s}",
            "the access key id {s} is rejected",
        ),
        (
            "aws_sts_access_key_id",
            "aws_access_key",
            "ASIA" + r(UPPER + "234567", 16),
            "os.environ['AWS_ACCESS_KEY_ID'] = '{s}'",
            "STS gave us {s} as the temporary key",
        ),
        (
            "aws_secret_access_key",
            "aws_secret_key",
            r.aws_secret(),
            "aws_secret_access_key={s}",
            "my aws_secret_access_key: {s} - still 403",
        ),
        (
            "aws_secret_key_bare",
            "aws_secret_key",
            r.aws_secret(),
            'conn = S3Connection(region, "{s}")',
            "the second half of the pair was {s} if that helps",
        ),
        ("aws_bedrock_key", "aws_bedrock_key", "ABSK" + r.b64(99), 'BEDROCK = "{s}"', "bedrock says {s} is not authorised"),
        (
            "google_api_key",
            "google_api_key",
            "AIza" + r(URLSAFE, 35),
            '<script src="https://maps.googleapis.com/maps/api/js?key={s}"></script>',
            "the maps key {s} shows a watermark",
        ),
        (
            "google_oauth_client_secret",
            "google_oauth_secret",
            "GOCSPX-" + r(URLSAFE, 28),
            'flow = Flow(client_id, "{s}")',
            "Google says the client {s} is invalid",
        ),
        (
            "gcp_service_account_key",
            "private_key",
            _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), serialization.PrivateFormat.PKCS8).replace("\n", "\\n"),
            '{{"type": "service_account", "project_id": "acme-prod", "private_key": "{s}",'
            ' "client_email": "ci@acme-prod.iam.gserviceaccount.com"}}',
            'our service account JSON has "private_key": "{s}", is the format right?',
        ),
        (
            "azure_storage_account_key",
            "azure_storage_key",
            r.b64(64).rstrip("=")[:86] + "==",
            'conn = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s};EndpointSuffix=core.windows.net"',
            "uploads fail with AccountName=acme;AccountKey={s};",
        ),
        (
            "azure_service_bus_key",
            "azure_storage_key",
            r.b64(32),
            '"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={s}"',
            "the bus says SharedAccessKey={s} is wrong",
        ),
        (
            "azure_sas_url",
            "azure_sas_token",
            sas_sig,
            'url = "https://acme.blob.core.windows.net/exports/q3.csv?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-01T00:00:00Z'
            '&spr=https&sig={s}"',
            "this link gives 403: https://acme.blob.core.windows.net/c/a.txt?sp=r&st=2026-01-01&se=2026-02-01&sv=2022-11-02&sr=b"
            "&sig={s} why?",
        ),
        (
            "azure_sas_connection_string",
            "azure_sas_token",
            urllib.parse.quote(r.b64(32), safe=""),
            'AZURE = "BlobEndpoint=https://acme.blob.core.windows.net/;SharedAccessSignature=sv=2021-08-06&ss=bfqt&srt=sco'
            '&sp=rwdlacupx&sig={s}"',
            "SharedAccessSignature=sv=2021-08-06&ss=b&srt=sco&sp=rl&se=2026-03-01&sig={s} stopped working",
        ),
        (
            "azure_ad_client_secret",
            "azure_ad_client_secret",
            r(ALNUM, 3) + r(DIGITS, 1) + "Q~" + r(URLSAFE + "~.", 33) + r(ALNUM, 1),
            'credential = ClientSecretCredential(tenant, client_id, "{s}")',
            "the app registration secret is {s} and it says AADSTS7000215",
        ),
        ("digitalocean_oauth_token", "digitalocean_token", "doo_v1_" + r(HEX, 64), "DO_TOKEN={s}", "doctl rejects {s} now"),
        (
            "alibaba_access_key_id",
            "alibaba_access_key",
            "LTAI" + r(ALNUM, 20),
            "client = AcsClient('{s}', secret, 'cn-hangzhou')",
            "the AccessKey ID {s} is disabled?",
        ),
        ("alibaba_secret", "alibaba_secret_key", r(ALNUM, 30), 'ALIBABA_CLOUD_ACCESS_KEY_SECRET = "{s}"', "the Alibaba secret is {s}"),
        ("yandex_api_key", "yandex_api_key", "AQVN" + r(URLSAFE, 36), "YC_API_KEY: {s}", "yandex cloud key {s} is refused"),
        ("yandex_aws_key", "yandex_token", "YC" + r(URLSAFE, 38), 'yandex_storage_secret = "{s}"', "for Yandex object storage I use {s}"),
        (
            "cloudflare_api_token",
            "cloudflare_api_token",
            r(URLSAFE, 40),
            'CLOUDFLARE_API_TOKEN = "{s}"',
            "Our Cloudflare API token is {s}, can you check it?",
        ),
        ("cloudflare_global_api_key", "cloudflare_api_key", r(HEX, 37), "cloudflare_api_key: {s}", "cloudflare global key: {s}"),
        (
            "cloudflare_origin_ca_key",
            "cloudflare_origin_ca_key",
            f"v1.0-{r(HEX, 24)}-{r(HEX, 146)}",
            "ORIGIN_CA_KEY={s}",
            "the origin CA key {s} cannot create certificates",
        ),
        (
            "databricks_token",
            "databricks_token",
            "dapi" + r(HEX, 32) + rng.choice(["", "-2", "-3"]),
            'DATABRICKS_TOKEN = "{s}"',
            "workspace token {s} gives 403",
        ),
        ("heroku_api_key_v2", "heroku_api_key", "HRKU-AA" + r(URLSAFE, 58), "export HEROKU_API_KEY={s}", "heroku login with {s} fails"),
        ("heroku_api_key_uuid", "heroku_api_key", r.uuid(), "heroku_api_key = '{s}'", "my Heroku API key is {s}"),
        ("fly_token", "fly_token", "fo1_" + r(URLSAFE, 43), "FLY_API_TOKEN={s}", "flyctl says {s} expired"),
        ("fly_macaroon", "fly_token", "fm2_" + r.b64(120), 'fly_token: "FlyV1 {s}"', "the deploy token FlyV1 {s} is not accepted"),
        ("netlify_pat", "netlify_token", "nfp_" + r(ALNUM, 36), "NETLIFY_AUTH_TOKEN={s}", "netlify deploy rejects {s}"),
        ("netlify_legacy_token", "netlify_token", r(URLSAFE, 43), 'netlify_token = "{s}"', "the Netlify token {s} has no site access"),
        (
            "openshift_token",
            "openshift_token",
            "sha256~" + r(URLSAFE, 43),
            "oc login --token={s} --server=https://api.acme:6443",
            "oc login with {s} says unauthorized",
        ),
        ("scalingo_token", "scalingo_token", "tk-us-" + r(URLSAFE, 48), "SCALINGO_API_TOKEN={s}", "scalingo login --api-token {s} fails"),
        (
            "planetscale_token",
            "planetscale_token",
            "pscale_tkn_" + r(URLSAFE, 43),
            "PLANETSCALE_SERVICE_TOKEN={s}",
            "pscale says {s} is revoked",
        ),
        (
            "planetscale_password",
            "planetscale_token",
            "pscale_pw_" + r(URLSAFE, 43),
            "DATABASE_PASSWORD='{s}'",
            "the branch password {s} is refused",
        ),
        ("pulumi_token", "pulumi_token", "pul-" + r(HEX, 40), "PULUMI_ACCESS_TOKEN={s}", "pulumi login fails with {s}"),
        (
            "terraform_cloud_token",
            "hashicorp_tf_token",
            r(ALNUM, 14) + ".atlasv1." + r(URLSAFE, 67),
            'credentials "app.terraform.io" {{ token = "{s}" }}',
            "terraform login stored {s} but plan says 401",
        ),
        (
            "vault_service_token",
            "vault_token",
            "hvs." + r(URLSAFE, 95),
            "VAULT_TOKEN={s} vault kv get secret/app",
            "vault says {s} is expired",
        ),
        ("vault_batch_token", "vault_token", "hvb." + r(URLSAFE, 150), "X-Vault-Token: {s}", "the batch token {s} can't renew"),
        ("vault_legacy_token", "vault_token", "s." + r(ALNUM, 24), 'export VAULT_TOKEN="{s}"', "my old vault token is {s}"),
        ("doppler_token", "doppler_token", "dp.pt." + r(ALNUM, 43), "DOPPLER_TOKEN={s}", "doppler run says {s} is invalid"),
        ("infracost_token", "infracost_token", "ico-" + r(ALNUM, 32), "INFRACOST_API_KEY={s}", "infracost rejects {s}"),
        (
            "dynatrace_token",
            "dynatrace_token",
            "dt0c01." + r(UPPER + DIGITS, 24) + "." + r(UPPER + DIGITS, 64),
            "DT_API_TOKEN={s}",
            "dynatrace answers 401 to {s}",
        ),
        (
            "defined_networking_token",
            "defined_networking_token",
            "dnkey-" + r(UPPER + DIGITS, 26) + "-" + r(UPPER + DIGITS, 52),
            "DN_API_KEY={s}",
            "the dnkey {s} was rotated?",
        ),
        ("clickhouse_cloud_key", "clickhouse_key", "4b1d" + r(ALNUM, 38), "CLICKHOUSE_SECRET={s}", "clickhouse cloud refuses {s}"),
        (
            "age_secret_key",
            "age_secret_key",
            "AGE-SECRET-KEY-1" + r("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58),
            "# created: 2026-01-01\n{s}",
            "my age identity is {s}",
        ),
        (
            "onepassword_secret_key",
            "onepassword_secret_key",
            f"A3-{r(UPPER + DIGITS, 6)}-{r(UPPER + DIGITS, 11)}-{r(UPPER + DIGITS, 5)}-{r(UPPER + DIGITS, 5)}-{r(UPPER + DIGITS, 5)}",
            "SECRET_KEY_1P = {s}",
            "my 1Password Secret Key is {s}",
        ),
        (
            "onepassword_service_token",
            "onepassword_token",
            "ops_" + ops_claims,
            "OP_SERVICE_ACCOUNT_TOKEN={s}",
            "op whoami says {s} is invalid",
        ),
        # version control and CI
        (
            "github_pat_classic",
            "github_token",
            "ghp_" + r(ALNUM, 36),
            "git remote set-url origin https://{s}@github.com/acme/app.git",
            "I use {s} to push",
        ),
        (
            "github_app_token",
            "github_token",
            "ghs_" + r(ALNUM, 36),
            "GH_APP_TOKEN: ${{{{ secrets.X }}}} # was {s}",
            "the installation token {s} expired",
        ),
        (
            "github_fine_grained_pat",
            "github_token",
            "github_pat_" + r(ALNUM, 22) + "_" + r(ALNUM, 59),
            "gh auth login --with-token <<< {s}",
            "the fine-grained token {s} can't see the org",
        ),
        ("gitlab_pat", "gitlab_token", "glpat-" + r(URLSAFE, 20), "PRIVATE-TOKEN: {s}", "gitlab gives 401 for {s}"),
        (
            "gitlab_pat_routable",
            "gitlab_token",
            "glpat-" + r(URLSAFE, 36) + ".01" + r(LOWER + DIGITS, 7),
            "GITLAB_TOKEN={s}",
            "the new-style gitlab token {s} is rejected",
        ),
        (
            "gitlab_runner_token",
            "gitlab_token",
            "glrt-" + r(URLSAFE, 20),
            "gitlab-runner register --token {s}",
            "the runner token {s} is not valid",
        ),
        (
            "gitlab_deploy_token",
            "gitlab_token",
            "gldt-" + r(URLSAFE, 20),
            "docker login -u deploy -p {s} registry.gitlab.com",
            "deploy token {s} can't pull",
        ),
        ("bitbucket_client_secret", "bitbucket_client_secret", r(URLSAFE, 64), "BITBUCKET_CLIENT_SECRET={s}", "bitbucket oauth secret {s}"),
        ("bitbucket_client_id", "bitbucket_client_id", r(ALNUM, 32), "bitbucket_key: {s}", "the bitbucket consumer key is {s}"),
        ("travis_token", "travis_token", r(ALNUM, 22), "TRAVIS_TOKEN={s}", "travis login --github-token with {s}"),
        ("droneci_token", "droneci_token", r(ALNUM, 32), "DRONE_TOKEN={s}", "the drone_token {s} doesn't work"),
        ("codecov_token", "codecov_token", r.uuid(), "CODECOV_TOKEN: {s}", "codecov upload fails with token {s}"),
        (
            "sourcegraph_token",
            "sourcegraph_token",
            "sgp_" + r(HEX, 16) + "_" + r(HEX, 40),
            "SRC_ACCESS_TOKEN={s}",
            "src login says {s} is invalid",
        ),
        ("sonarqube_user_token", "sonar_token", "squ_" + r(HEX, 40), "sonar.token={s}", "the sonar scanner rejects {s}"),
        ("snyk_token", "snyk_token", r.uuid(), "SNYK_TOKEN={s}", "snyk auth {s} fails"),
        (
            "harness_pat",
            "harness_token",
            f"pat.{r(URLSAFE, 22)}.{r(ALNUM, 24)}.{r(ALNUM, 20)}",
            "x-api-key: {s}",
            "harness api says {s} is expired",
        ),
        ("octopus_api_key", "octopus_deploy_key", "API-" + r(UPPER + DIGITS, 26), "OCTOPUS_API_KEY={s}", "octo push --apiKey {s} fails"),
        ("jfrog_api_key", "jfrog_token", "AKCp" + r(ALNUM, 69), "artifactory_api_key = {s}", "jfrog rt ping with {s} fails"),
        ("jfrog_identity_token", "jfrog_token", r(ALNUM, 64), "JFROG_ACCESS_TOKEN={s}", "the jfrog token is {s}"),
        (
            "atlassian_api_token",
            "atlassian_token",
            "ATATT3" + r(URLSAFE, 177) + "=" + r(HEX.upper(), 8),
            "JIRA_API_TOKEN={s}",
            "our Confluence API token {s} returns 401",
        ),
        ("atlassian_legacy_token", "atlassian_token", r(ALNUM, 20) + r(HEX, 4), "jira_token = '{s}'", "my Jira token is {s}"),
        # registries
        ("npm_token", "npm_token", "npm_" + r(ALNUM, 36), "//registry.npmjs.org/:_authToken={s}", "npm whoami fails with {s}"),
        ("pypi_token", "pypi_token", "pypi-AgEIcHlwaS5vcmc" + r(URLSAFE, 150), "TWINE_PASSWORD={s}", "twine rejects {s}"),
        ("docker_pat", "docker_pat", "dckr_pat_" + r(URLSAFE, 27), "docker login -u acme -p {s}", "docker hub refuses {s}"),
        ("rubygems_key", "rubygems_key", "rubygems_" + r(HEX, 48), "GEM_HOST_API_KEY={s}", "gem push says {s} is wrong"),
        ("clojars_token", "clojars_token", "CLOJARS_" + r(LOWER + DIGITS, 60), ':password "{s}"', "lein deploy rejects {s}"),
        (
            "nuget_config_password",
            "nuget_password",
            r.password(16),
            '<add key="ClearTextPassword" value="{s}" />',
            'my nuget.config has <add key="ClearTextPassword" value="{s}" /> and restore fails',
        ),
        # AI
        (
            "openai_project_key",
            "openai_key",
            "sk-proj-" + r(URLSAFE, 74) + "T3BlbkFJ" + r(URLSAFE, 74),
            "OPENAI_API_KEY={s}",
            "openai says {s} has no quota",
        ),
        (
            "anthropic_key",
            "anthropic_key",
            "sk-ant-api03-" + r(URLSAFE, 93) + "AA",
            'Anthropic(api_key="{s}")',
            "the console key {s} fails",
        ),
        ("huggingface_token", "huggingface_token", "hf_" + r(ALNUM, 34), "HF_TOKEN={s}", "huggingface-cli login with {s}"),
        (
            "huggingface_org_token",
            "huggingface_token",
            "api_org_" + r(UPPER + LOWER, 34),
            "HUGGINGFACE_ORG={s}",
            "the org token {s} can't upload",
        ),
        ("perplexity_key", "perplexity_key", "pplx-" + r(ALNUM, 48), "PPLX_API_KEY={s}", "perplexity answers 401 to {s}"),
        ("cohere_key", "cohere_key", r(ALNUM, 40), "co = cohere.Client('{s}')", "cohere rejects my key {s}"),
        ("privateai_key", "privateai_token", r(ALNUM, 32), "PRIVATE_AI_KEY={s}", "private-ai says {s} is unknown"),
        # payments and commerce
        ("stripe_live_secret", "stripe_key", "sk_live_" + r(ALNUM, 99), 'Stripe.apiKey = "{s}";', "charges fail with {s}"),
        (
            "stripe_webhook_secret",
            "stripe_webhook_secret",
            "whsec_" + r(ALNUM, 32),
            "endpoint_secret = '{s}'",
            "my Stripe webhook secret is {s}",
        ),
        ("square_access_token", "square_token", "sq0atp-" + r(URLSAFE, 22), "SQUARE_TOKEN={s}", "square says {s} is unauthorized"),
        ("square_oauth_secret", "square_secret", "sq0csp-" + r(URLSAFE, 43), "square_app_secret: {s}", "the square application secret {s}"),
        ("shopify_shared_secret", "shopify_token", "shpss_" + r(HEX, 32), "SHOPIFY_API_SECRET={s}", "the shopify secret {s} fails HMAC"),
        ("duffel_token", "duffel_token", "duffel_live_" + r(URLSAFE, 43), "DUFFEL_ACCESS_TOKEN={s}", "duffel search gives 401 with {s}"),
        ("easypost_key", "easypost_key", "EZAK" + r(ALNUM, 54), "EasyPost::Client.new(api_key: '{s}')", "easypost rejects {s}"),
        (
            "flutterwave_secret",
            "flutterwave_key",
            "FLWSECK_TEST-" + r("abcdefgh" + DIGITS, 32) + "-X",
            "FLW_SECRET_KEY={s}",
            "flutterwave says {s} is invalid",
        ),
        (
            "flutterwave_encryption_key",
            "flutterwave_key",
            "FLWSECK_TEST" + r("abcdefgh" + DIGITS, 12),
            "FLW_ENCRYPTION_KEY={s}",
            "the flutterwave encryption key {s}",
        ),
        ("shippo_token", "shippo_token", "shippo_live_" + r(HEX, 40), "shippo.config.api_key = '{s}'", "shippo rejects {s}"),
        ("gocardless_token", "gocardless_token", "live_" + r(URLSAFE, 40), "GOCARDLESS_ACCESS_TOKEN={s}", "gocardless says {s} is invalid"),
        ("plaid_access_token", "plaid_token", "access-sandbox-" + r.uuid(), "access_token = '{s}'", "plaid item with {s} errors"),
        ("plaid_secret", "plaid_secret", r(LOWER + DIGITS, 30), "PLAID_SECRET={s}", "the plaid secret is {s}"),
        ("coinbase_token", "coinbase_token", r(URLSAFE, 64), "COINBASE_API_SECRET={s}", "coinbase signature fails with {s}"),
        ("kraken_token", "kraken_token", r.b64(66), "KRAKEN_PRIVATE_KEY={s}", "kraken says EAPI:Invalid key for {s}"),
        ("kucoin_token", "kucoin_token", r(HEX, 24), "kucoin_api_key: {s}", "kucoin rejects {s}"),
        ("lob_key", "lob_key", "live_" + r(HEX, 35), "LOB_API_KEY={s}", "lob returns 401 for {s}"),
        # communication
        (
            "slack_user_token",
            "slack_token",
            f"xoxp-{r.digits(12)}-{r.digits(12)}-{r.digits(13)}-{r(HEX, 32)}",
            "SLACK_USER_TOKEN={s}",
            "the user token {s} lost its scopes",
        ),
        (
            "slack_app_token",
            "slack_token",
            f"xapp-1-A{r(UPPER + DIGITS, 10)}-{r.digits(13)}-{r(HEX, 64)}",
            "SocketModeHandler(app, '{s}')",
            "socket mode fails with {s}",
        ),
        (
            "slack_config_token",
            "slack_token",
            f"xoxe.xoxp-1-{r(UPPER + DIGITS, 164)}",
            "SLACK_CONFIG_TOKEN={s}",
            "the config token {s} expired",
        ),
        (
            "slack_webhook",
            "slack_webhook",
            f"https://hooks.slack.com/services/T{r(UPPER + DIGITS, 10)}/B{r(UPPER + DIGITS, 10)}/{r(ALNUM, 24)}",
            "SLACK_WEBHOOK_URL={s}",
            "posting to {s} returns invalid_token",
        ),
        (
            "discord_webhook",
            "discord_webhook",
            f"https://discord.com/api/webhooks/{r.digits(18)}/{r(URLSAFE, 68)}",
            "webhook = '{s}'",
            "discord webhook {s} gives 401",
        ),
        (
            "discord_bot_token",
            "discord_bot_token",
            base64.b64encode(discord_id.encode()).decode().rstrip("=") + "." + r(URLSAFE, 6) + "." + r(URLSAFE, 38),
            "client.run('{s}')",
            "my bot token {s} is rejected by the gateway",
        ),
        ("discord_client_secret", "discord_client_secret", r(URLSAFE, 32), "DISCORD_CLIENT_SECRET={s}", "the discord oauth secret is {s}"),
        (
            "teams_webhook",
            "teams_webhook",
            f"https://acme.webhook.office.com/webhookb2/{r.uuid()}@{r.uuid()}/IncomingWebhook/{r(HEX, 32)}/{r.uuid()}",
            "TEAMS_HOOK = '{s}'",
            "the Teams connector {s} stopped posting",
        ),
        ("sendgrid_key", "sendgrid_key", f"SG.{r(URLSAFE, 22)}.{r(URLSAFE, 43)}", "SENDGRID_API_KEY={s}", "sendgrid rejects {s}"),
        ("sendinblue_key", "sendinblue_key", f"xkeysib-{r(HEX, 64)}-{r(ALNUM, 16)}", "BREVO_API_KEY={s}", "brevo says {s} is not valid"),
        (
            "mailgun_signing_key",
            "mailgun_key",
            f"{r('abcdefgh' + DIGITS, 32)}-{r('abcdefgh' + DIGITS, 8)}-{r('abcdefgh' + DIGITS, 8)}",
            "MAILGUN_WEBHOOK_SIGNING_KEY={s}",
            "mailgun webhook signing key {s} fails",
        ),
        ("mailgun_public_key", "mailgun_key", "pubkey-" + r(HEX, 32), "mailgun.validate(key='{s}')", "the validation key {s}"),
        ("mailchimp_key", "mailchimp_key", f"{r(HEX, 32)}-us{rng.randrange(1, 22)}", "MAILCHIMP_API_KEY={s}", "mailchimp rejects {s}"),
        ("twilio_account_sid", "twilio_account_sid", "AC" + r(HEX, 32), "client = Client('{s}', token)", "my account SID is {s}"),
        ("twilio_auth_token", "twilio_auth_token", r(HEX, 32), "TWILIO_AUTH_TOKEN={s}", "Twilio says the auth token {s} is wrong"),
        ("messagebird_key", "messagebird_key", r(ALNUM, 25), "MESSAGEBIRD_ACCESS_KEY={s}", "messagebird rejects {s}"),
        ("sendbird_token", "sendbird_token", r(HEX, 40), "SENDBIRD_API_TOKEN={s}", "the sendbird token {s}"),
        ("mattermost_token", "mattermost_token", r(LOWER + DIGITS, 26), "MATTERMOST_TOKEN={s}", "mattermost bot token {s} fails"),
        ("intercom_token", "intercom_token", r(URLSAFE, 59) + "=", "INTERCOM_ACCESS_TOKEN={s}", "intercom says {s} is unauthorized"),
        ("gitter_token", "gitter_token", r(HEX, 40), "GITTER_TOKEN={s}", "gitter rejects {s}"),
        (
            "twitter_bearer_token",
            "twitter_bearer_token",
            "A" * 22 + r(ALNUM + "%", 90),
            "TWITTER_BEARER={s}",
            "the bearer from the portal {s} fails",
        ),
        (
            "twitter_access_token",
            "twitter_token",
            f"{r.digits(19)}-{r(ALNUM, 40)}",
            "twitter_access_token: {s}",
            "twitter access token {s}",
        ),
        ("twitch_token", "twitch_token", r(LOWER + DIGITS, 30), "TWITCH_CLIENT_SECRET={s}", "twitch oauth fails for {s}"),
        ("linkedin_client_secret", "linkedin_client_secret", r(ALNUM, 16), "LINKEDIN_CLIENT_SECRET={s}", "LinkedIn secret {s} is refused"),
        ("facebook_page_token", "facebook_access_token", "EAAG" + r(ALNUM, 180), "FB_PAGE_TOKEN={s}", "graph api says {s} expired"),
        ("facebook_app_secret", "facebook_secret", r(HEX, 32), "FACEBOOK_APP_SECRET={s}", "the facebook app secret is {s}"),
        ("nytimes_key", "nytimes_token", r(ALNUM, 32), "NYTIMES_API_KEY={s}", "nytimes api rejects {s}"),
        ("zendesk_key", "zendesk_key", r(ALNUM, 40), "ZENDESK_API_TOKEN={s}", "zendesk token {s} gives 401"),
        # SaaS
        ("linear_api_key", "linear_api_key", "lin_api_" + r(ALNUM, 40), "LINEAR_API_KEY={s}", "linear says {s} is invalid"),
        (
            "notion_token",
            "notion_token",
            "ntn_" + r.digits(11) + r(ALNUM, 35),
            "NOTION_TOKEN={s}",
            "the notion integration {s} can't see pages",
        ),
        (
            "notion_legacy_secret",
            "notion_token",
            "secret_" + r(ALNUM, 43),
            "notion = Client(auth='{s}')",
            "my notion secret {s} stopped working",
        ),
        ("airtable_pat", "airtable_token", "pat" + r(ALNUM, 14) + "." + r(HEX, 64), "AIRTABLE_TOKEN={s}", "airtable rejects {s}"),
        ("airtable_api_key", "airtable_api_key", "key" + r(ALNUM, 14), "airtable_api_key = '{s}'", "our old Airtable key is {s}"),
        ("asana_client_secret", "asana_client_secret", r(ALNUM, 32), "ASANA_CLIENT_SECRET={s}", "asana oauth secret {s}"),
        ("hubspot_private_app_token", "hubspot_token", "pat-na1-" + r.uuid(), "HUBSPOT_TOKEN={s}", "hubspot says {s} is expired"),
        ("hubspot_legacy_key", "hubspot_api_key", r.uuid(upper=True), "hubspot_hapikey={s}", "the old HubSpot key is {s}"),
        ("typeform_token", "typeform_token", "tfp_" + r(URLSAFE, 59), "TYPEFORM_TOKEN={s}", "typeform rejects {s}"),
        (
            "contentful_pat",
            "contentful_token",
            "CFPAT-" + r(URLSAFE, 43),
            "CONTENTFUL_MANAGEMENT_TOKEN={s}",
            "contentful says {s} is invalid",
        ),
        ("contentful_delivery_token", "contentful_token", r(URLSAFE, 43), "contentful_delivery_token: {s}", "the Contentful CDA token {s}"),
        ("postman_key", "postman_token", f"PMAK-{r(HEX, 24)}-{r(HEX, 34)}", "POSTMAN_API_KEY={s}", "newman can't fetch with {s}"),
        ("prefect_key", "prefect_token", "pnu_" + r(ALNUM, 36), "PREFECT_API_KEY={s}", "prefect cloud login {s} fails"),
        ("readme_key", "readme_token", "rdme_" + r(LOWER + DIGITS, 70), "README_API_KEY={s}", "rdme openapi fails with {s}"),
        ("frameio_token", "frameio_token", "fio-u-" + r(URLSAFE, 64), "FRAMEIO_TOKEN={s}", "frame.io rejects {s}"),
        ("sentry_user_token", "sentry_token", "sntryu_" + r(HEX, 64), "SENTRY_AUTH_TOKEN={s}", "sentry-cli says {s} is invalid"),
        (
            "sentry_org_token",
            "sentry_token",
            f"sntrys_{sentry_claims}_{r(B64, 43)}",
            "SENTRY_ORG_TOKEN={s}",
            "source maps upload fails with {s}",
        ),
        (
            "grafana_service_account_token",
            "grafana_token",
            f"glsa_{r(ALNUM, 32)}_{r(HEX, 8)}",
            "GRAFANA_TOKEN={s}",
            "grafana api says {s} is invalid",
        ),
        ("grafana_cloud_token", "grafana_token", "glc_" + r.b64(90).rstrip("="), "GRAFANA_CLOUD_API_KEY={s}", "grafana cloud rejects {s}"),
        ("grafana_api_key", "grafana_token", grafana_claims, "GF_API_KEY={s}", "the old grafana key {s}"),
        ("newrelic_user_key", "newrelic_key", "NRAK-" + r(UPPER + DIGITS, 27), "NEW_RELIC_API_KEY={s}", "nerdgraph says {s} is invalid"),
        (
            "newrelic_browser_key",
            "newrelic_key",
            "NRJS-" + r(HEX, 19),
            "NREUM.loader_config = {{licenseKey: '{s}'}}",
            "the browser key {s}",
        ),
        ("datadog_api_key", "datadog_api_key", r(HEX, 32), "DD_API_KEY={s}", "datadog agent says the API key {s} is invalid"),
        ("datadog_app_key", "datadog_app_key", r(HEX, 40), "DD_APP_KEY={s}", "my Datadog application key is {s}"),
        ("sumologic_key", "sumologic_key", r(ALNUM, 64), "SUMO_ACCESS_KEY={s}", "Sumo Logic rejects access key {s}"),
        ("okta_token", "okta_token", "00" + r(URLSAFE, 40), "OKTA_API_TOKEN={s}", "okta says token {s} is invalid"),
        (
            "authress_key",
            "authress_key",
            f"sc_{r(LOWER + DIGITS, 12)}.{r(LOWER + DIGITS, 4)}.acc_{r(LOWER + DIGITS, 14)}.{r(B64, 60)}",
            "AUTHRESS_KEY={s}",
            "authress rejects {s}",
        ),
        ("settlemint_token", "settlemint_token", "sm_pat_" + r(ALNUM, 16), "SETTLEMINT_TOKEN={s}", "settlemint says {s} expired"),
        ("maxmind_key", "maxmind_key", f"{r(ALNUM, 6)}_{r(ALNUM, 29)}_mmk", "MAXMIND_LICENSE_KEY={s}", "geoipupdate fails with {s}"),
        ("intra42_secret", "intra42_secret", "s-s4t2ud-" + r(HEX, 64), "FT_SECRET={s}", "the 42 api secret {s}"),
        ("adobe_client_secret", "adobe_client_secret", "p8e-" + r(ALNUM, 32), "ADOBE_CLIENT_SECRET={s}", "adobe io rejects {s}"),
        ("adafruit_key", "adafruit_key", r(URLSAFE, 32), "ADAFRUIT_IO_KEY={s}", "adafruit io says {s} is wrong"),
        ("algolia_admin_key", "algolia_key", r(HEX, 32), "ALGOLIA_ADMIN_KEY={s}", "algolia rejects {s}"),
        (
            "mapbox_secret_token",
            "mapbox_token",
            "sk.eyJ1Ijoi" + r(URLSAFE, 60) + "." + r(URLSAFE, 22),
            "MAPBOX_TOKEN={s}",
            "mapbox says {s} is invalid",
        ),
        ("dropbox_short_lived", "dropbox_token", "sl." + r(URLSAFE, 140), "DROPBOX_TOKEN={s}", "dropbox rejects {s}"),
        ("beamer_key", "beamer_token", "b_" + r(URLSAFE, 44), "BEAMER_API_KEY={s}", "beamer says {s} is invalid"),
        ("confluent_secret", "confluent_key", r(ALNUM, 64), "CONFLUENT_CLOUD_API_SECRET={s}", "confluent rejects the secret {s}"),
        ("fastly_token", "fastly_token", r(URLSAFE, 32), "FASTLY_API_TOKEN={s}", "fastly purge fails with {s}"),
        ("launchdarkly_token", "launchdarkly_token", r(URLSAFE, 40), "LAUNCHDARKLY_ACCESS_TOKEN={s}", "launchdarkly rejects {s}"),
        ("looker_client_secret", "looker_client_secret", r(ALNUM, 24), "LOOKERSDK_CLIENT_SECRET={s}", "looker says {s} is invalid"),
        ("meraki_key", "cisco_meraki_key", r(HEX, 40), "MERAKI_DASHBOARD_API_KEY={s}", "meraki dashboard rejects {s}"),
        ("rapidapi_key", "rapidapi_key", r(URLSAFE, 50), "X-RapidAPI-Key: {s}", "rapidapi says {s} is not subscribed"),
        (
            "freemius_key",
            "freemius_key",
            "sk_" + r(ALNUM + "!*<>#", 29),
            "'secret_key' => '{s}',",
            "fs_dynamic_init(array('secret_key' => '{s}'))",
        ),
        (
            "sidekiq_secret",
            "sidekiq_secret",
            f"{r(HEX, 8)}:{r(HEX, 8)}",
            "BUNDLE_GEMS__CONTRIBSYS__COM={s}",
            "bundle config BUNDLE_GEMS__CONTRIBSYS__COM {s}",
        ),
        # structural
        ("jwt_hs256", "jwt", jwt, "Cookie: session={s}", "my session token {s} expired"),
        ("jwt_base64", "jwt", base64.b64encode(_jwt_random(r).encode()).decode(), "AUTH_B64={s}", "the base64 of the token is {s}"),
        (
            "bearer_token",
            "bearer_token",
            r(URLSAFE + ".~", 44),
            "curl -H 'Authorization: Bearer {s}' https://api.acme.test/",
            "with Authorization: Bearer {s} I get 403",
        ),
        (
            "authorization_token_scheme",
            "authorization_token",
            r(HEX, 40),
            "headers = {{'Authorization': 'Token {s}'}}",
            "we send Authorization: Token {s} to the API",
        ),
        (
            "basic_auth_header",
            "basic_credentials",
            base64.b64encode(f"{r(LOWER, 6)}:{r.password(12)}".encode()).decode(),
            'proxy_set_header Authorization "Basic {s}";',
            "the proxy wants Basic {s} but rejects it",
        ),
        (
            "curl_user_password",
            "basic_credentials",
            r.password(14),
            "curl -u deploy:{s} https://api.acme.test/v1/releases",
            "I run curl -u admin:{s} https://acme.test and get 401",
        ),
        (
            "postgres_url_password",
            "database_url_password",
            r.url_password(16),
            "DATABASE_URL=postgresql+psycopg://app:{s}@db.acme.internal:5432/app",
            "postgres://app:{s}@10.1.2.3/app times out",
        ),
        (
            "mysql_url_password",
            "database_url_password",
            r.url_password(12),
            "engine = create_engine('mysql://root:{s}@localhost/shop')",
            "mysql://root:{s}@db/shop refuses me",
        ),
        (
            "amqp_url_password",
            "database_url_password",
            r.url_password(18),
            "BROKER_URL = 'amqps://worker:{s}@mq.acme.test:5671/prod'",
            "celery can't reach amqps://worker:{s}@mq.acme.test",
        ),
        (
            "https_url_password",
            "url_password",
            r.url_password(13),
            "pip install --index-url https://ci:{s}@pypi.acme.test/simple app",
            "the index https://ci:{s}@pypi.acme.test/simple says 401",
        ),
        ("generic_api_secret", "generic_secret", r(ALNUM, 32), 'API_SECRET = "{s}"', "our api secret is {s}, is it still active?"),
        ("generic_yaml_token", "generic_secret", r(URLSAFE, 48), "auth:\n  refresh_token: {s}\n", "the refresh token: {s}"),
        (
            "generic_json_client_secret",
            "generic_secret",
            r(ALNUM + "_-", 36),
            '{{"client_id": "web", "client_secret": "{s}"}}',
            "client_secret={s} is in the config",
        ),
        ("password_assignment", "generic_secret", r.password(14), "DB_PASSWORD='{s}'", "my password is {s} and it is refused"),
        (
            "password_in_prose",
            "generic_secret",
            r.password(12),
            "# the password for the staging box is {s}",
            "The password for the staging database is {s} - can you reset it?",
        ),
        ("passphrase_assignment", "generic_secret", r.password(20), "ssh_key_passphrase: {s}", "the passphrase is {s}"),
        ("pgp_private_key", "private_key", _pgp_block(r), "{s}", "here is my PGP key:\n{s}\nis it corrupt?"),
    ]
    entries += [
        (f"private_key_{kind}", "private_key", pem, 'KEY = """{s}"""', "the server key:\n{s}\nnginx rejects it") for kind, pem in keys
    ]
    return [Secret(type_, value, code, prose, kind) for kind, type_, value, code, prose in entries]
