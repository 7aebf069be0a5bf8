"""A corpus of realistic secrets, each in its service's real format, each placed once in code and
once in prose. The values are random (made for this corpus, valid for no account); the private
keys and JWTs are generated fresh by real libraries, so their structure is exactly real.

`value` is what must never reach the model, the audit database or the logs; `type` the
placeholder it must become.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


@dataclass(frozen=True)
class Secret:
    type: str
    value: str
    code: str  # a source-code line or block with {s}
    prose: str  # a support-chat message with {s}

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
            out.update(line[i:i + width] for i in range(0, len(line) - width + 1))
        return {f for f in out if len(f) >= 8}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(payload: dict[str, object], key: bytes) -> str:
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64url(json.dumps(payload).encode())
    return head + "." + _b64url(hmac.new(key, head.encode(), hashlib.sha256).digest())


def _pem(key: object, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()  # type: ignore[attr-defined]


FIXED = [
    Secret("aws_access_key", "AKIAC3NCCOUIJCQ2CCZD", 'AWS_ACCESS_KEY_ID = "{s}"', "I set my access key id to {s} but boto3 still says access denied"),
    Secret("aws_access_key", "ASIAKUXH3PUNXHUTXA5M", "session = boto3.Session(aws_access_key_id='{s}', region_name='eu-west-1')",
           "The temporary key ({s}) from STS expired after an hour, is that normal?"),
    Secret("aws_secret_key", "nVTqmHo5zhS918fVDtbGulrq2awIItRLFQhv0y9l", "[default]\naws_secret_access_key = {s}\nregion = us-east-1",
           "my ~/.aws/credentials has aws_secret_access_key={s} and it still fails"),
    Secret("google_api_key", "AIzazSc9B1Yp-KsFP31JMQ9zknPDJWwH03k14f6", 'const MAPS_KEY = "{s}";', "The maps widget shows an error with key {s}, can you check?"),
    Secret("google_oauth_secret", "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", '"client_secret": "{s}",', "Our OAuth client secret is {s}, why does Google reject the redirect?"),
    Secret("azure_storage_key", "2zyCnAtbE59nL92VGEwxc7PDMFESDe2gu3RSvZTlAtl4IkWAh9l0C9hZgeKolM2r7F1kGVHAFc7HWuaqTMJ89h==",
           'conn = "DefaultEndpointsProtocol=https;AccountName=acmedata;AccountKey={s};EndpointSuffix=core.windows.net"',
           "The connection string is DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s} and uploads fail"),
    Secret("digitalocean_token", "dop_v1_056a661f9b1672d8a10dc3c17f958ae930e09c8d47f420e6d026593e4f7c3d92", 'export DIGITALOCEAN_TOKEN="{s}"',
           "doctl auth init with {s} says unauthorized"),
    Secret("github_token", "ghp_jwTEBysr7h8xR1nxCPPYTbXF0WFq72TGuZon", "git clone https://{s}@github.com/acme/private-repo.git",
           "I pasted my token {s} into the CI settings, is that right?"),
    Secret("github_token", "gho_MmMVF70BET8HEjfphZH2uXRReydMu0gSdi1M", "headers = {{'Authorization': 'token {s}'}}",
           "the oauth token gho one is {s}, the app says it has no scopes"),
    Secret("github_token", "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",
           "GH_TOKEN: {s}", "Fine-grained PAT {s} cannot push to the repo"),
    Secret("gitlab_token", "glpat-byyKDtZ2GfA_Kjy7HH-P", "gitlab = Gitlab('https://gitlab.com', private_token='{s}')",
           "my gitlab personal access token is {s}, it fails with 401"),
    Secret("npm_token", "npm_UYjxlStVcUM1zusQcOe1HlWDSZSZ8dF83e33", "//registry.npmjs.org/:_authToken={s}", "npm publish fails with token {s}"),
    Secret("pypi_token", "pypi-AgEIcHlwaS5vcmc3dpdemwMJhYd5sQB36ceYkLJiW37ydSA3pk14tGJ9EKdmYk2adOKlKwUKD8UVH6mVqfG-5",
           "[pypi]\nusername = __token__\npassword = {s}", "twine upload rejects my token {s} with 403"),
    Secret("docker_pat", "dckr_pat_v3DxrSvkS05nSIR3Lubs52PYh49", "echo {s} | docker login -u acme --password-stdin",
           "docker login with {s} works locally but not in CI"),
    Secret("rubygems_key", "rubygems_a9cb27a400e8bdbce28d8d5d1d2952a96da08b96af115abe", "---\n:rubygems_api_key: {s}", "gem push fails, my key is {s}"),
    Secret("openai_key", "sk-proj-TgJysMXdfaIzKMECJfJGpZ-L-Xdj7Cq4z-5UPoa71tzEi55gT3BlbkFJLZ_QDWU9ZoSJc2KxCxj7GMBCOcyPyR-Bm34Vlq8zULSnaaNC",
           'client = OpenAI(api_key="{s}")', "Here is the key we use: {s} - why is billing failing?"),
    Secret("anthropic_key", "sk-ant-api03-hkxKpaKCXGfUgNe2Gfd3ua8bWafsn06U170ailxq3M46HnFLFKDlnN9oYfB9PmHSbUXMb0_k_eMyL_x0r5eB6KBNz2pj4AA",
           "ANTHROPIC_API_KEY={s}", "I exported {s} but the SDK says invalid x-api-key"),
    Secret("huggingface_token", "hf_Nsz7pgQw48z72MmWBXZ5PZiXZjhGq32kY4", "login(token='{s}')", "the hub token {s} cannot download the gated model"),
    Secret("stripe_key", "sk_live_HgzL9YYFAxCl0iGPkUZtThPS", "stripe.api_key = '{s}'", "We charge cards with {s} and get card_declined for every one"),
    Secret("stripe_key", "rk_test_aViGmFeUhEzDQaVVFIcpVtpu03l4k1jvyx", "STRIPE_RESTRICTED_KEY={s}", "the restricted key {s} can't read invoices"),
    Secret("slack_token", "xoxb-005402044850-0759512582135-tZkS7aGkC7LOC6680k7t52lc", 'app = App(token="{s}")', "the bot token {s} gets not_in_channel"),
    Secret("slack_webhook", "https://hooks.slack.com/services/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", "requests.post('{s}', json={{'text': msg}})",
           "alerts go to {s} but nothing shows up in the channel"),
    Secret("discord_webhook", "https://discord.com/api/webhooks/030729764924345969/9sSSPI4gXUa55MqdxiS4XxLFV44ibd8-zbivYdvHemyZkajCjPtsEmPXIcza-a8RHTdZ",
           'WEBHOOK = "{s}"', "Our discord webhook is {s} and it returns 404"),
    Secret("sendgrid_key", "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", "sg = SendGridAPIClient('{s}')",
           "emails bounce, our sendgrid key is {s}"),
    Secret("mailgun_key", "key-e1d0db3ec6b338c66c31dffad95aed16", "auth=('api', '{s}')", "mailgun says forbidden with {s}"),
    Secret("twilio_key", "SKb3e17f77524457163a01472ff4dcb6af", "client = Client('{s}', api_secret, account_sid)", "the twilio api key {s} was revoked?"),
    Secret("shopify_token", "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", "X-Shopify-Access-Token: {s}", "the admin API token {s} returns 401"),
    Secret("telegram_bot_token", "7090862957:AAexDe6pYLhLE336l2vjnH1LcJNgyS5B5_W", "bot = telebot.TeleBot('{s}')", "my bot {s} doesn't receive updates"),
    Secret("square_token", "EAAAJyBawpGeq0g-b3uRE9ZOWlJOpb5f_Pp2cBslQIcVOsElol4a8JQYPXNtyyW0", 'SQUARE_ACCESS_TOKEN: "{s}"', "square sandbox token {s} fails"),
    Secret("bearer_token", "zhG-Aun4CtB1SQcrIiNIjsEUblwntxqjB0~9M6gz", "curl -H 'Authorization: Bearer {s}' https://api.acme.test/v1/me",
           "I call the API with Authorization: Bearer {s} and get 403"),
    Secret("generic_secret", "W2R!xpHwulFSBA", 'DB_PASSWORD = "{s}"', "my password is {s} and the login page says it is wrong"),
    Secret("generic_secret", "!e#gcATaKicT", "smtp.login('alerts@acme.test', password='{s}')", "The admin password: {s} - please reset it"),
    Secret("database_url_password", "zA6zgZoCT2L3aZ1f", 'DATABASE_URL = "postgresql://app:{s}@db.internal:5432/app"',
           "we connect with postgres://app:{s}@10.0.0.5/app and it times out"),
    Secret("database_url_password", "onROMn17vaPrdW4q55gK", "REDIS_URL=redis://default:{s}@cache.acme.test:6379/0", "redis://default:{s}@cache:6379 refuses auth"),
    Secret("database_url_password", "Sfe5XUXGSmXPdAyE8b", "client = MongoClient('mongodb+srv://ops:{s}@cluster0.abcde.mongodb.net/prod')",
           "Atlas URI mongodb+srv://ops:{s}@cluster0.abcde.mongodb.net fails"),
    Secret("url_password", "*sYauvvPhiE7", "ftp = urlopen('ftp://backup:{s}@files.acme.test/dump.sql')", "the sftp://deploy:{s}@files.acme.test login is refused"),
    Secret("generic_secret", "ovCvmpE9FSmoesp7yb8lcJY4AZxiaNCt", "API_KEY = '{s}'", "our api key is {s}, is it still active?"),
    Secret("generic_secret", "08f7507eb668203bb16f7326e86e3f6c7e3d177f", 'WEBHOOK_SECRET = "{s}"', "the webhook secret: {s} doesn't validate signatures"),
    Secret("generic_secret", "kIPMTF8IsPxKXYfxx3LbKi471Vd82_COCX5joai894arR1um", "refresh_token: {s}", "the refresh token is {s}, can you revoke it?"),
    Secret("generic_secret", "hS4Ask7jnsdgGQDvi4ZSDfwzdh3J8YCD2i2N", "OAUTH_CLIENT_SECRET={s}", "client_secret={s} is what I put in the config"),
]


@cache
def corpus() -> list[Secret]:
    """The fixed secrets plus generated private keys, JWTs and Basic credentials (48 in all)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    generated = [
        Secret("private_key", _pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL), 'KEY = """{s}"""', "here is our server key, is it valid?\n{s}"),
        Secret("private_key", _pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8), "{s}", "the cert key:\n{s}\nnginx rejects it"),
        Secret("private_key", _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH), "# deploy key\n{s}", "my ssh key is\n{s}"),
        Secret("jwt", _jwt({"sub": "u_1842", "role": "admin", "exp": 1924992000}, b"k" * 32), "token = '{s}'", "my session token {s} expired, please help"),
        Secret("jwt", _jwt({"iss": "acme", "aud": "api", "sub": "svc-billing", "scope": "read write"}, b"q" * 32),
               "fetch(url, {{ headers: {{ Authorization: `Bearer {s}` }} }})", "the API answers 401 to Bearer {s}"),
        Secret("basic_credentials", base64.b64encode(b"deploy:Vq7!nR2zLp").decode(), "Authorization: Basic {s}", "we send the header Authorization: Basic {s}"),
        Secret("basic_credentials", base64.b64encode(b"admin:S3cure-Passw0rd-2026").decode(), "headers['Authorization'] = 'Basic {s}'",
               "with Basic {s} the proxy still asks for credentials"),
    ]
    return FIXED + generated
