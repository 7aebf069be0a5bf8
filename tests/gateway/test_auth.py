"""Auth per mount (`server/auth.py`): every route of the app, found by walking its route tree, is
listed here with the credential it requires, and each is called over a real socket with none,
with the wrong one and with the right one. A route added without a line here fails the walk."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from dialog.store import Site, Store
from server.auth import bearer
from tests.app_routes import url_of, walk
from tests.conftest import ADMIN_TOKEN
from tests.dialog_client import Chat, staff_token

API_KEY = "api-key-7e1d"
REQUIRED = {
    ("GET", "/healthz"): "open",
    ("GET", "/metrics"): "api_key",
    ("POST", "/v1/completions"): "api_key",
    ("POST", "/v1/chat/completions"): "api_key",
    ("POST", "/v1/responses"): "api_key",
    ("GET", "/v1/models"): "api_key",
    ("GET", "/v1/models/{model:path}"): "api_key",
    ("POST", "/tokenize"): "api_key",
    ("POST", "/detokenize"): "api_key",
    ("POST", "/v1/feedback"): "api_key",
    ("WS", "/v1/dialog"): "site",  # the site's checks; the demo site also the API key
    ("GET", "/widget.js"): "open",
    ("GET", "/widget.css"): "open",
    ("GET", "/widget/demo"): "open",
    ("GET", "/console"): "open",  # the page holds nothing: its data needs a staff token
    ("GET", "/console.js"): "open",
    ("GET", "/console.css"): "open",
    ("WS", "/v1/console/socket"): "staff",  # (tests/dialog/test_handoff.py)
    ("GET", "/v1/console/conversations/{cid}/transcript"): "staff",
    ("POST", "/v1/dialog/conversations/{cid}/messages"): "signed",  # a helpdesk's reply, signed with the webhook secret
    ("GET", "/audit"): "sign_in",  # the page to whoever has the token, the sign-in form to the others
    ("POST", "/audit/login"): "token_in_form",  # it checks the token the sign-in form sends
    ("POST", "/audit/logout"): "open",
    ("GET", "/audit/static/{name}"): "admin",
    ("GET", "/audit/api/records"): "admin",
    ("GET", "/audit/api/records/{ref}"): "admin",
    ("GET", "/audit/api/verify"): "admin",
    ("GET", "/admin/model"): "admin",
    ("POST", "/admin/model"): "admin",  # last: its call swaps the chat to an upstream that is not there
}
BODIES = {
    "/v1/completions": {"prompt": "hi", "max_tokens": 1},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    "/tokenize": {"prompt": "hi"},
    "/v1/responses": {"input": "hi", "max_output_tokens": 1},
    "/detokenize": {"tokens": [1, 2]},
    "/v1/feedback": {"request_id": "cmpl-" + "0" * 32, "event": "accepted"},
    "/admin/model": {"upstreams": ["http://127.0.0.1:9"], "surface": "chat"},
}


def call(client: httpx.Client, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = BODIES.get(path)
    return client.request(method, url_of(path), headers=headers, json=body, follow_redirects=False)


def test_every_route_requires_the_credential_of_its_mount(tiny_server) -> None:
    with tiny_server(api_key=API_KEY) as s, httpx.Client(base_url=s.url, timeout=60) as client:
        assert walk(s.server.config.app.routes) == set(REQUIRED)  # a new route must be classified here
        staff = staff_token(s.dialog_dir, "Dana", ["demo"])
        client.post("/v1/completions", json=BODIES["/v1/completions"], headers={"Authorization": f"Bearer {API_KEY}"})  # record 1
        for (method, path), need in REQUIRED.items():
            if method == "WS":
                continue
            none, wrong = call(client, method, path, None), call(client, method, path, ADMIN_TOKEN if need == "api_key" else API_KEY)
            right = call(client, method, path, {"api_key": API_KEY, "admin": ADMIN_TOKEN, "sign_in": ADMIN_TOKEN}.get(need))
            where = f"{method} {path}"
            if need in ("api_key", "admin"):
                assert none.status_code == wrong.status_code == 401, (where, none.text[:200], wrong.text[:200])
                code = "invalid_api_key" if need == "api_key" else "admin_token_required"
                assert none.json()["error"]["code"] == code and wrong.json()["error"]["code"] == code, where
                assert right.status_code < 400, (where, right.status_code, right.text[:200])
            elif need == "sign_in":
                sign_in = 'action="/audit/login"'
                assert none.status_code == wrong.status_code == 401 and sign_in in none.text and sign_in in wrong.text, where
                assert right.status_code == 200 and sign_in not in right.text, where
            elif need == "token_in_form":
                assert none.status_code == wrong.status_code == 401, where
                signed_in = client.post(path, content=f"token={ADMIN_TOKEN}", headers={"Content-Type": "application/x-www-form-urlencoded"})
                assert signed_in.status_code == 303 and "tandem_audit" in signed_in.cookies, where
                client.cookies.clear()
            elif need == "staff":  # neither the API key nor the admin token opens the console's data
                admin = call(client, method, path, ADMIN_TOKEN)
                assert none.status_code == wrong.status_code == admin.status_code == 401, where
                assert call(client, method, path, staff).status_code == 404, where  # signed in: no such conversation
            elif need == "signed":
                assert none.status_code == wrong.status_code == 401 and none.json()["error"] == "bad_signature", where
            else:
                assert none.status_code != 401 and none.status_code < 500, (where, none.status_code)


def test_the_socket_lets_a_widget_in_by_its_site_and_the_demo_site_only_with_the_key(tiny_server) -> None:
    with tiny_server(api_key=API_KEY) as s:
        store = asyncio.run(Store.open(s.dialog_dir / "chat.db"))
        asyncio.run(store.put_site(Site("acme", "Acme", ("https://shop.example",), "Be brief.")))
        asyncio.run(store.close())
        with Chat(s.url, site="acme", origin="https://shop.example") as chat:  # a widget on the customer's page: no API key
            assert chat.welcome["type"] == "welcome"
        with Chat(s.url, site="acme", origin="https://evil.example") as chat:
            assert chat.welcome["code"] == "origin_not_allowed"
        ws_url = s.url.replace("http://", "ws://") + "/v1/dialog?site_key=demo"
        with pytest.raises(InvalidStatus) as refused:  # closed before the handshake is accepted: the server answers 403
            connect(ws_url, additional_headers={"Origin": s.url}, open_timeout=10)
        assert refused.value.response.status_code == 403
        with connect(ws_url, additional_headers={"Origin": s.url, "Authorization": f"Bearer {API_KEY}"}, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "hello", "v": 1, "site_key": "demo"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer  abc ", "abc"),
        (b"BEARER abc", "abc"),
        (b"Basic abc", None),
        (b"Bearer", None),
        (b"", None),
        (b"Bearerabc", None),
        (b"Bearer \xff\xfe", "\xff\xfe"),
    ],
)
def test_the_bearer_token_is_read_in_one_place(header: bytes, token: str | None) -> None:
    assert bearer([(b"host", b"x"), (b"Authorization", header)]) == token
    assert bearer([(b"host", b"x")]) is None
