"""API keys and scopes, the open loopback mode, and the refusal to start open on a public address.

``web`` (events) < ``server`` (adds identities) < ``admin`` (adds customers); see ../shared/API.md, "Auth".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.main import create_app
from app.settings import Scope, Settings
from tests.api.test_bad_input import error_body
from tests.conftest import AppFactory

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"k-web": Scope.WEB, "k-server": Scope.SERVER, "k-admin": Scope.ADMIN}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keyed(make_client: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(api_keys=KEYS) as client:
        yield client


async def seed(client: httpx.AsyncClient) -> None:
    """A customer c-1 and a visitor a-1, for the calls below to find."""
    for event in ({"customer_id": "c-1", "type": "page_view"}, {"anonymous_id": "a-1", "type": "page_view"}):
        r = await client.post("/v1/events", json=event, headers=bearer("k-admin"))
        assert r.status_code == 202, r.text


async def events_call(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/v1/events", json={"customer_id": "c-2", "type": "page_view"}, headers=headers)


async def identities_call(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post(
        "/v1/identities", json={"anonymous_id": "a-1", "customer_id": "c-1"}, headers=headers
    )


async def customers_call(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get("/v1/customers/c-1", headers=headers)


async def decide_call(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    body = {"customer_id": "c-2", "placement": "web.home", "event": {"type": "page_view"}}
    return await client.post("/v1/decide", json=body, headers=headers)


CALLS = {
    "events": events_call,
    "decide": decide_call,
    "identities": identities_call,
    "customers": customers_call,
}
SUCCESS = {"events": 202, "decide": 200, "identities": 200, "customers": 200}


# ---------------------------------------------------------------------------------------------------
# Who may do what
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "call", "allowed"),
    [
        ("k-web", "events", True),
        ("k-web", "decide", True),
        ("k-web", "identities", False),
        ("k-web", "customers", False),
        ("k-server", "events", True),
        ("k-server", "decide", True),
        ("k-server", "identities", True),
        ("k-server", "customers", False),
        ("k-admin", "events", True),
        ("k-admin", "identities", True),
        ("k-admin", "customers", True),
    ],
)
async def test_scopes(keyed: httpx.AsyncClient, key: str, call: str, allowed: bool) -> None:
    await seed(keyed)
    r = await CALLS[call](keyed, bearer(key))
    if allowed:
        assert r.status_code == SUCCESS[call], r.text
        return
    body = error_body(r, 403, "forbidden")
    needed = {"identities": "server", "customers": "admin"}[call]
    assert f"'{needed}'" in body["detail"]
    assert f"'{KEYS[key]}'" in body["detail"]


async def test_forbidden_link_changes_nothing(keyed: httpx.AsyncClient) -> None:
    await seed(keyed)
    error_body(await identities_call(keyed, bearer("k-web")), 403, "forbidden")
    r = await keyed.get("/v1/customers/a-1", params={"id_type": "anonymous"}, headers=bearer("k-admin"))
    assert r.json()["id"] == "a-1", r.text  # still a visitor of its own, not merged into c-1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param(bearer("k-unknown"), id="unknown-key"),
        pytest.param(bearer("K-ADMIN"), id="key-in-other-case"),
        pytest.param({"Authorization": "Basic azphZG1pbjo="}, id="basic"),
        pytest.param({"Authorization": "k-admin"}, id="no-scheme"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-key"),
        pytest.param({"Authorization": "Bearer "}, id="bearer-blank"),
        pytest.param({"X-Api-Key": "k-admin"}, id="other-header"),
    ],
)
@pytest.mark.parametrize("call", list(CALLS))
async def test_unauthenticated(keyed: httpx.AsyncClient, headers: dict[str, str], call: str) -> None:
    await seed(keyed)
    body = error_body(await CALLS[call](keyed, headers), 401, "unauthorized")
    assert "Bearer" in body["detail"] or "NBA_API_KEYS" in body["detail"]
    # Nothing was written on the refused call: no new customer, no link.
    r = await keyed.get("/v1/customers/c-2", headers=bearer("k-admin"))
    error_body(r, 404, "customer_not_found")
    r = await keyed.get("/v1/customers/a-1", params={"id_type": "anonymous"}, headers=bearer("k-admin"))
    assert r.json()["id"] == "a-1", r.text


async def test_scheme_is_case_insensitive(keyed: httpx.AsyncClient) -> None:
    """RFC 9110 section 11.1: the auth scheme is case-insensitive; the key itself is not."""
    r = await events_call(keyed, {"Authorization": "bearer k-web"})
    assert r.status_code == 202, r.text


async def test_key_is_checked_before_the_body(keyed: httpx.AsyncClient) -> None:
    """A caller without a key learns that it needs one, not what the schema is."""
    r = await keyed.post("/v1/events", json={"colour": "red"})
    error_body(r, 401, "unauthorized")
    r = await keyed.post("/v1/identities", json={"colour": "red"}, headers=bearer("k-web"))
    error_body(r, 403, "forbidden")


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/docs", "/openapi.json"])
async def test_public_endpoints_need_no_key(keyed: httpx.AsyncClient, path: str) -> None:
    r = await keyed.get(path)
    assert r.status_code == 200, r.text


async def test_openapi_documents_bearer_errors(keyed: httpx.AsyncClient) -> None:
    spec = (await keyed.get("/openapi.json")).json()
    responses = spec["paths"]["/v1/customers/{customer_id}"]["get"]["responses"]
    assert {"401", "403", "404"} <= set(responses)


@pytest.mark.parametrize("call", list(CALLS))
async def test_open_without_keys(client: httpx.AsyncClient, call: str) -> None:
    await client.post("/v1/events", json={"customer_id": "c-1", "type": "page_view"})
    await client.post("/v1/events", json={"anonymous_id": "a-1", "type": "page_view"})
    r = await CALLS[call](client, {})
    assert r.status_code == SUCCESS[call], r.text


# ---------------------------------------------------------------------------------------------------
# Refusing to start open on a public address
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NBA_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_env_keys")
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "nba.example.com"])
def test_app_refuses_a_public_address_without_keys(host: str) -> None:
    with pytest.raises(SystemExit) as raised:
        create_app(Settings(_env_file=None, host=host))
    message = str(raised.value)
    assert "NBA_API_KEYS" in message
    assert host in message
    assert "127.0.0.1" in message  # the other way out


@pytest.mark.usefixtures("no_env_keys")
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"host": "0.0.0.0", "api_keys": {"k": Scope.ADMIN}}, id="public-with-keys"),
        pytest.param({"host": "127.0.0.1"}, id="loopback-v4"),
        pytest.param({"host": "127.0.0.2"}, id="loopback-v4-other"),
        pytest.param({"host": "::1"}, id="loopback-v6"),
        pytest.param({"host": "localhost"}, id="localhost"),
    ],
)
def test_app_starts_on_loopback_or_with_keys(settings: dict[str, Any]) -> None:
    assert create_app(Settings(_env_file=None, **settings)) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``nba ...`` in a clean environment (no NBA_* but ``env``) and an empty folder (no .env)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("NBA_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.slow
def test_cli_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(port))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "NBA_API_KEYS" in result.stderr
    assert "0.0.0.0" in result.stderr
    # Started nothing: no embedded Redis data folder, nobody listening on the port.
    assert list(tmp_path.iterdir()) == []
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))


@pytest.mark.slow
def test_cli_refuses_malformed_keys_without_printing_them(tmp_path: Path) -> None:
    secret = "s3cr3t-do-not-print-me"
    result = run_cli(tmp_path, "serve", "--port", str(free_port()), NBA_API_KEYS=f"k-web:web,{secret}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "NBA_API_KEYS" in result.stderr
    assert "entry 2" in result.stderr
    assert secret[:4] not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# NBA_API_KEYS
# ---------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_env_keys")
@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ("k1:web,k2:admin", {"k1": Scope.WEB, "k2": Scope.ADMIN}),
        (" k1:web , k2 : server ,", {"k1": Scope.WEB, "k2": Scope.SERVER}),
        ("a:b:admin", {"a:b": Scope.ADMIN}),  # the scope is after the last colon
        ("", {}),
    ],
)
def test_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, keys: dict[str, Scope]
) -> None:
    monkeypatch.setenv("NBA_API_KEYS", value)
    settings = Settings(_env_file=None)
    assert settings.api_keys == keys
    for key in keys:
        assert key not in repr(settings)


@pytest.mark.usefixtures("no_env_keys")
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("k1:web,s3cr3t-value", "entry 2 is not key:scope"),
        ("s3cr3t-value:web,:admin", "entry 2 is not key:scope"),
        ("s3cr3t-value:root", "entry 1 has an unknown scope"),
        ("s3cr3t-value:Admin", "entry 1 has an unknown scope"),
    ],
)
def test_malformed_keys(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("NBA_API_KEYS", value)
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)
    message = str(raised.value)
    assert "NBA_API_KEYS" in message
    assert problem in message
    assert "s3cr3t" not in message  # an error message ends up in logs; the keys must not
