"""Users, hashes, tokens, the role table and the ASGI gate, without a server."""

from __future__ import annotations

import asyncio
import io
import json
import stat
import time
from pathlib import Path

import pytest

from emlabel.errors import SettingsError
from emlabel.monailabel import auth
from emlabel.monailabel.auth import (
    ADMIN,
    ANNOTATOR,
    PUBLIC,
    REVIEWER,
    ROUTE_ROLES,
    AuthConfigError,
    Authenticator,
    AuthUser,
    TokenError,
    hash_password,
    issue_token,
    load_or_create_secret,
    load_users,
    parse_users,
    request_user,
    required_role,
    rule_for,
    verify_password,
)
from emlabel.monailabel.gate import (
    Binding,
    Gate,
    _argv_binding,
    check_binding,
    own_origins,
    server_binding,
)
from emlabel.settings import parse_settings

FAST = 1000  # hash rounds for tests (the default takes ~0.2 s per verify)


def users_doc(**roles: list[str]) -> dict:
    return {
        "users": {
            name: {"password_hash": hash_password(f"{name}-pw", rounds=FAST), "roles": r}
            for name, r in roles.items()
        }
    }


def write_users(path: Path, **roles: list[str]) -> Path:
    path.write_text(json.dumps(users_doc(**roles)))
    return path


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    users = write_users(
        tmp_path / "users.json", ann=[ANNOTATOR], rev=[REVIEWER], adm=[ADMIN, ANNOTATOR]
    )
    return Authenticator(users, b"s" * 64, token_minutes=480)


# ---------------------------------------------------------------------------- hashing
def test_hash_and_verify_password():
    hashed = hash_password("correct horse")
    assert hashed.startswith("$pbkdf2-sha256$600000$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct hors", hashed)
    assert not verify_password("", hashed)
    assert not verify_password("x", "not a hash")
    assert hash_password("correct horse") != hashed  # salted
    with pytest.raises(ValueError):
        hash_password("")


def test_cli_hash_password_reads_stdin(monkeypatch, capsys):
    from emlabel.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert main(["hash-password"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert verify_password("s3cret pass", hashed)

    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["hash-password"]) == 2
    assert "empty" in capsys.readouterr().err


# ------------------------------------------------------------------------- users file
def test_users_file_json_and_yaml(tmp_path):
    doc = users_doc(alice=[ANNOTATOR], bob=[REVIEWER, ANNOTATOR])
    (tmp_path / "u.json").write_text(json.dumps(doc))
    users = load_users(tmp_path / "u.json")
    assert users["alice"].roles == (ANNOTATOR,) and users["bob"].as_user().top_role == REVIEWER
    yaml = pytest.importorskip("yaml")
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(doc))
    assert load_users(tmp_path / "u.yaml") == users


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"password": "plain", "roles": ["admin"]}, "never 'password'"),
        ({"password_hash": "plain", "roles": ["admin"]}, "pbkdf2_sha256"),
        ({"password_hash": None, "roles": ["annotator"], "rolez": []}, "unknown keys"),
        ({"password_hash": "H", "roles": ["root"]}, "roles"),
        ({"password_hash": "H", "roles": []}, "roles"),
    ],
)
def test_bad_users_file_entries_are_named(entry, needle):
    entry = {k: (hash_password("x", rounds=FAST) if v == "H" else v) for k, v in entry.items()}
    with pytest.raises(AuthConfigError, match=needle) as e:
        parse_users({"users": {"carol": entry}})
    assert "carol" in e.value.message


def test_empty_or_missing_users_file(tmp_path):
    with pytest.raises(AuthConfigError, match="no users"):
        parse_users({"users": {}})
    with pytest.raises(AuthConfigError, match="does not exist"):
        load_users(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AuthConfigError, match="not valid JSON"):
        load_users(tmp_path / "bad.json")


def test_secret_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "model" / ".auth-secret"
    first = load_or_create_secret(path)
    assert len(first) >= 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == [".auth-secret"]  # no temp file left
    path.write_text("short")
    with pytest.raises(AuthConfigError, match="32"):
        load_or_create_secret(path)


def test_authenticator_from_settings(tmp_path):
    app_dir = tmp_path / "app"
    (app_dir / "model").mkdir(parents=True)
    write_users(app_dir / "users.json", ann=[ANNOTATOR])
    assert Authenticator.from_settings(parse_settings({}), app_dir) is None
    auth_ = Authenticator.from_settings(
        parse_settings({"auth_users": "users.json", "auth_token_minutes": "5"}), app_dir
    )
    assert auth_ is not None and auth_.token_minutes == 5
    assert auth_.users_file == app_dir / "users.json"
    assert (app_dir / "model" / ".auth-secret").is_file()
    (app_dir / "bad.json").write_text('{"users": {"eve": {"password": "x", "roles": []}}}')
    with pytest.raises(AuthConfigError, match=r"setting 'auth_users'.*eve"):
        Authenticator.from_settings(parse_settings({"auth_users": "bad.json"}), app_dir)


# ----------------------------------------------------------------------------- tokens
def test_login_issue_and_verify(authenticator):
    assert authenticator.login("ann", "wrong") is None
    assert authenticator.login("nobody", "ann-pw") is None
    record = authenticator.login("ann", "ann-pw")
    assert record is not None
    token = authenticator.issue(record)
    user = authenticator.verify(token)
    assert user == AuthUser("ann", (ANNOTATOR,))
    assert user.has_role(ANNOTATOR) and not user.has_role(REVIEWER)
    assert authenticator.verify(authenticator.issue(authenticator.users()["adm"])).has_role(ADMIN)


def test_expired_forged_and_foreign_tokens_are_refused(authenticator):
    record = authenticator.users()["rev"]
    old = issue_token(record, authenticator.secret, minutes=480, now=time.time() - 481 * 60)
    with pytest.raises(TokenError, match="expired"):
        authenticator.verify(old)
    foreign = issue_token(record, b"x" * 64, minutes=480)
    with pytest.raises(TokenError, match="not valid"):
        authenticator.verify(foreign)
    token = authenticator.issue(record)
    with pytest.raises(TokenError):
        authenticator.verify(token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb"))
    import jwt

    unsigned = jwt.encode(
        {"iss": "emlabel", "sub": "rev", "iat": int(time.time()), "exp": int(time.time()) + 60},
        None,
        algorithm="none",
    )
    with pytest.raises(TokenError):
        authenticator.verify(unsigned)


def test_tokens_follow_the_users_file(authenticator):
    token = authenticator.issue(authenticator.users()["ann"])
    doc = json.loads(authenticator.users_file.read_text())
    doc["users"]["ann"]["roles"] = [REVIEWER]
    authenticator.users_file.write_text(json.dumps(doc))
    assert authenticator.verify(token).roles == (REVIEWER,)  # roles are the file's current

    doc["users"]["ann"]["password_hash"] = hash_password("new", rounds=FAST)
    authenticator.users_file.write_text(json.dumps(doc))
    with pytest.raises(TokenError, match="changed"):
        authenticator.verify(token)  # a new password revokes old tokens

    del doc["users"]["rev"]
    rev_token_file = dict(doc)
    authenticator.users_file.write_text(json.dumps(rev_token_file))
    assert "rev" not in authenticator.users()

    authenticator.users_file.write_text("{broken")
    assert "adm" in authenticator.users()  # a broken file keeps the last good users


# ------------------------------------------------------------------------- role table
def served_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the running server has: stock + EMLabel + login."""
    import monailabel.app as ml_app
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount

    from emlabel.monailabel.gate import install_auth_routes
    from emlabel.monailabel.routes import install_request_guards

    install_request_guards()
    install_auth_routes(ml_app.app)
    found = []
    for route in iter_route_contexts(ml_app.app.routes):
        if isinstance(route.original_route, Mount):
            found += [("GET", f"{route.path}/some/file.js"), ("HEAD", f"{route.path}/x")]
            continue
        for method in sorted(route.methods or ["GET"]):
            found.append((method, route.path))
    return found


def test_every_served_route_has_a_rule():
    routes = served_routes()
    assert len(routes) > 50
    missing = [f"{m} {p}" for m, p in routes if rule_for(m, p) is None]
    assert not missing, f"routes without a rule in auth.ROUTE_ROLES: {missing}"
    paths = {p for _, p in routes}
    assert {"/emlabel/bundle/{model}", "/emlabel/stats", "/auth/token"} <= paths


def test_every_rule_names_a_known_role_and_a_real_method():
    for (method, pattern), role in ROUTE_ROLES.items():
        assert method in {"GET", "HEAD", "POST", "PUT", "DELETE"}, pattern
        assert role in (PUBLIC, ANNOTATOR, REVIEWER, ADMIN), pattern


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/", PUBLIC),
        ("GET", "/info/", PUBLIC),
        ("GET", "/info", PUBLIC),  # the router redirects to /info/
        ("GET", "/auth/", PUBLIC),
        ("POST", "/auth/token", PUBLIC),
        ("GET", "/ohif/index.html", PUBLIC),
        ("GET", "/static/favicon.ico", PUBLIC),
        ("GET", "/auth/token/valid", ANNOTATOR),
        ("POST", "/infer/segmentation", ANNOTATOR),
        ("POST", "/activelearning/random", ANNOTATOR),
        ("PUT", "/datastore/label", ANNOTATOR),
        ("GET", "/datastore/", ANNOTATOR),
        ("HEAD", "/datastore/image", ANNOTATOR),
        ("PUT", "/emlabel/stats", ANNOTATOR),
        ("POST", "/train/segmentation", REVIEWER),
        ("POST", "/train/", REVIEWER),
        ("DELETE", "/train/", REVIEWER),
        ("POST", "/scoring/verifier", REVIEWER),
        ("GET", "/emlabel/bundle/segmentation", REVIEWER),
        ("DELETE", "/datastore/label", ADMIN),
        ("DELETE", "/datastore/image", ADMIN),
        ("PUT", "/datastore/image", ADMIN),
        ("GET", "/model/segmentation", ADMIN),
        ("PUT", "/model/segmentation", ADMIN),
        ("DELETE", "/model/segmentation", ADMIN),
        ("GET", "/logs/", ADMIN),
        ("POST", "/batch/infer/segmentation", ADMIN),
        ("POST", "/proxy/dicom/stow/studies", ADMIN),  # the stricter of two matching rules
        ("GET", "/proxy/dicom/wado/studies/1", ANNOTATOR),
        ("POST", "/reload", ADMIN),
        ("GET", "/no/such/route", ADMIN),  # unknown routes need admin
        ("PATCH", "/datastore/label", ADMIN),
        ("OPTIONS", "/info/", ADMIN),
    ],
)
def test_required_roles(method, path, role):
    assert required_role(method, path) == role


# ------------------------------------------------------------------------------ gate
class Recorder:
    """A downstream ASGI app that reads the whole body and remembers what it saw."""

    def __init__(self, status: int = 200) -> None:
        self.calls: list[dict] = []
        self.status = status

    async def __call__(self, scope, receive, send):
        from starlette.requests import Request

        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append({"user": request_user(Request(scope)), "body": len(body)})
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app, method="GET", path="/", headers=None, chunks=(b"",)):
    """Run one HTTP request through an ASGI app: (status, headers, body)."""
    scope = {
        "type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "state": {},
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def bearer(authenticator: Authenticator, name: str) -> dict[str, str]:
    return {"Authorization": f"bearer {authenticator.issue(authenticator.users()[name])}"}


def test_gate_with_auth(authenticator):
    app = Recorder()
    gate = Gate(app, auth=authenticator, max_body_bytes=1 << 20)

    assert call(gate, "GET", "/info/")[0] == 200  # public, no token
    status, headers, body = call(gate, "POST", "/infer/segmentation")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert b"/auth/token" in body
    status, headers, _ = call(gate, "POST", "/infer/x", {"Authorization": "Bearer nonsense"})
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert len(app.calls) == 1

    status, _, body = call(gate, "POST", "/train/segmentation", bearer(authenticator, "ann"))
    assert status == 403
    assert "reviewer" in json.loads(body)["detail"]
    status, _, _ = call(gate, "POST", "/infer/segmentation", bearer(authenticator, "ann"))
    assert status == 200 and app.calls[-1]["user"] == "ann"
    assert call(gate, "POST", "/train/x", bearer(authenticator, "rev"))[0] == 200
    assert call(gate, "DELETE", "/model/x", bearer(authenticator, "rev"))[0] == 403
    assert call(gate, "DELETE", "/model/x", bearer(authenticator, "adm"))[0] == 200
    assert app.calls[-1]["user"] == "adm"
    # auth on: any Host (the token is what counts)
    assert call(gate, "GET", "/info/", {"Host": "labels.example.org"})[0] == 200


def test_gate_without_auth_answers_loopback_hosts_only():
    app = Recorder()
    gate = Gate(app, auth=None, max_body_bytes=1 << 20)
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", "127.0.0.2"):
        assert call(gate, "DELETE", "/datastore/label", {"Host": host})[0] == 200, host
    assert app.calls[-1]["user"] is None
    for host in ("evil.example:8000", "10.0.0.5:8000", "127.0.0.1.evil.example"):
        status, _, body = call(gate, "GET", "/info/", {"Host": host})
        assert status == 400 and b"loopback" in body, host


def test_gate_caps_the_body():
    app = Recorder()
    gate = Gate(app, auth=None, max_body_bytes=1000)
    status, _, body = call(gate, "PUT", "/datastore/image", {"Content-Length": str(2 << 30)})
    assert status == 413 and b"max_upload_mb" in body and not app.calls
    assert call(gate, "PUT", "/x", {"Content-Length": "12abc"})[0] == 400

    assert call(gate, "PUT", "/x", chunks=(b"a" * 600, b"b" * 400))[0] == 200  # exactly the cap
    assert app.calls[-1]["body"] == 1000
    status, _, body = call(gate, "PUT", "/x", chunks=(b"a" * 600, b"b" * 600, b"c" * 600))
    assert status == 413 and b"max_upload_mb" in body
    assert app.calls[-1]["body"] == 600  # the app saw only what was under the cap


def test_gate_swallows_the_apps_error_after_a_cut_body():
    async def app(scope, receive, send):
        while (await receive())["type"] != "http.disconnect":
            pass
        raise RuntimeError("client disconnected")

    status, _, _ = call(Gate(app, auth=None, max_body_bytes=10), "PUT", "/x", chunks=(b"x" * 11,))
    assert status == 413


# --------------------------------------------------------------------------- binding
def test_binding_rule():
    check_binding(Binding("127.0.0.1", 8000), auth_on=False)
    check_binding(Binding("::1", 8000), auth_on=False)
    check_binding(Binding("0.0.0.0", 8000), auth_on=True)
    for binding in (
        Binding("0.0.0.0", 8000),
        Binding("::", 8000),
        Binding("10.1.2.3", 8000),
        Binding("myhost.example", 8000),
        Binding("127.0.0.1", 8000, uds="/tmp/s.sock"),
        Binding(None),
    ):
        with pytest.raises(SystemExit, match="auth_users"):
            check_binding(binding, auth_on=False)


def test_binding_comes_from_uvicorn_config_up_the_stack():
    import uvicorn

    config = uvicorn.Config("monailabel.app:app", host="10.9.8.7", port=8123)  # noqa: F841
    binding = (lambda: server_binding())()
    assert (binding.host, binding.port, binding.source) == ("10.9.8.7", 8123, "uvicorn")


def test_binding_from_the_command_line():
    argv = ["main.py", "start_server", "--app", "a", "--studies", "s", "--port", "9000"]
    binding = _argv_binding(argv)
    assert binding is not None and (binding.host, binding.port) == ("0.0.0.0", 9000)
    assert _argv_binding([*argv, "--host", "127.0.0.1"]).is_loopback
    assert _argv_binding(["uvicorn", "x:app"]) is None


def test_own_origins():
    assert own_origins(Binding("127.0.0.1", 8000)) == [
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
    ]
    assert "https://10.0.0.2:8443" in own_origins(Binding("10.0.0.2", 8443, ssl=True))
    assert len(own_origins(Binding("0.0.0.0", 8000))) == 3


# -------------------------------------------------------------------------- settings
def test_auth_settings_parse_and_validate():
    s = parse_settings(
        {
            "auth_users": " users.json ",
            "cors_origins": "http://viewer.example:3000,https://x.example/",
            "max_upload_mb": "5",
            "auth_token_minutes": "60",
        }
    )
    assert s.auth_users == "users.json" and s.max_upload_mb == 5
    assert s.cors_origins == ("http://viewer.example:3000", "https://x.example/")
    assert parse_settings({"auth_users": ""}).auth_users == ""
    for conf in (
        {"cors_origins": "*"},
        {"cors_origins": "http://x.example/path"},
        {"cors_origins": "viewer.example"},
        {"max_upload_mb": "0"},
        {"auth_token_minutes": "0"},
        {"auth_token_minutes": str(31 * 24 * 60)},
    ):
        key = next(iter(conf))
        with pytest.raises(SettingsError, match=f"'{key}'"):
            parse_settings(conf)


def test_request_user_reads_the_gate_state():
    from starlette.requests import Request

    scope = {"type": "http", "state": {auth.STATE_KEY: AuthUser("zoe", (ADMIN,))}}
    assert request_user(Request(scope)) == "zoe"
    assert request_user(Request({"type": "http"})) is None
