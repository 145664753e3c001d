"""EMLabel's gate in front of MONAI Label's FastAPI app: CORS, body cap, tokens and roles.

Stock MONAI Label allows any browser origin with credentials and, without a Keycloak,
lets every request through. :func:`install_gate` (called at the end of the app's
``on_init_complete``, inside uvicorn's lifespan startup) replaces the app's middleware
stack by, outermost first:

1. Starlette's ``CORSMiddleware`` allowing only the ``cors_origins`` setting and the
   server's own origins (the stock ``CORSMiddleware`` is taken out of the stack);
2. :class:`Gate`: a request body larger than ``max_upload_mb`` is answered 413 (at once
   when ``Content-Length`` says so, or when a chunked body crosses the cap); with auth on
   (setting ``auth_users``) a request needs a bearer token of a user whose role the route
   table (:data:`emlabel.monailabel.auth.ROUTE_ROLES`) asks for: 401 without a valid
   token, 403 naming the role needed otherwise. The user goes into
   ``scope["state"]["emlabel_user"]`` (read it with ``auth.request_user``). With auth off
   the server must listen on a loopback address only, and a request whose ``Host`` is not
   a loopback name is refused (so a web page cannot reach it by DNS rebinding).

It also serves MONAI Label's login protocol (``GET /auth/``, ``POST /auth/token``,
``GET /auth/token/valid``) ahead of the stock routes, so ``MONAILabelClient.auth_enabled``,
``auth_token`` and ``update_auth`` work unchanged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings as ml_settings
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emlabel.monailabel.auth import (
    PUBLIC,
    STATE_KEY,
    AuthConfigError,
    Authenticator,
    AuthUser,
    RouteRule,
    TokenError,
    compile_rules,
    request_auth_user,
    required_role,
)

logger = logging.getLogger(__name__)

_ROUTE_TAG = "emlabel_auth"
_BEARER_REALM = 'Bearer realm="emlabel"'
_CORS_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS")


# ------------------------------------------------------------------------------ binding
@dataclasses.dataclass(frozen=True)
class Binding:
    """Where uvicorn listens: a host and port, a unix socket, an inherited fd, or unknown."""

    host: str | None
    port: int | None = None
    ssl: bool = False
    uds: str | None = None
    fd: int | None = None
    source: str = "unknown"

    @property
    def is_loopback(self) -> bool:
        """True only for a TCP address no other machine can reach (127.0.0.0/8, ::1)."""
        if self.uds or self.fd is not None or not self.host:
            return False
        return is_loopback_host(self.host)

    def describe(self) -> str:
        if self.uds:
            return f"unix socket {self.uds}"
        if self.fd is not None:
            return f"file descriptor {self.fd}"
        if not self.host:
            return "an address EMLabel cannot determine"
        return f"{self.host}:{self.port}" if self.port else self.host


def is_loopback_host(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_config() -> Any:
    """The ``uvicorn.Config`` of the server running this lifespan (found up the call stack).

    ``python -m monailabel.main start_server --host X`` hands the host only to
    ``uvicorn.run`` (no setting or variable keeps it); the lifespan runs inside uvicorn's
    ``LifespanOn.main``, whose ``self.config`` is what uvicorn will bind.
    """
    try:
        from uvicorn import Config
    except ImportError:  # pragma: no cover - uvicorn comes with monailabel
        return None
    frame = sys._getframe(1)
    for _ in range(300):
        if frame is None:
            break
        for value in list(frame.f_locals.values()):
            if isinstance(value, Config):
                return value
            if type(value).__module__.startswith("uvicorn"):
                config = getattr(value, "config", None)
                if isinstance(config, Config):
                    return config
        frame = frame.f_back
    return None


def _argv_binding(argv: list[str]) -> Binding | None:
    """The binding ``monailabel.main start_server`` parsed from ``argv`` (last resort)."""
    if "start_server" not in argv:
        return None
    from monailabel.main import Main

    try:
        args, _ = Main(actions=("start_server",)).args_parser().parse_known_args(argv[1:])
    except SystemExit:
        return None
    if getattr(args, "action", None) != "start_server":
        return None
    return Binding(
        host=args.host,
        port=args.port,
        ssl=bool(args.ssl_certfile or args.ssl_keyfile),
        source="command line",
    )


def server_binding() -> Binding:
    """Where this server listens: uvicorn's config, else ``sys.argv``, else unknown."""
    config = _uvicorn_config()
    if config is not None:
        return Binding(
            host=config.host,
            port=config.port,
            ssl=bool(config.is_ssl),
            uds=config.uds,
            fd=config.fd,
            source="uvicorn",
        )
    return _argv_binding(sys.argv) or Binding(host=None)


def check_binding(binding: Binding, auth_on: bool) -> None:
    """Refuse to serve without tokens on anything but a loopback address."""
    if auth_on or binding.is_loopback:
        return
    raise SystemExit(
        f"EMLabel: bad configuration: refusing to serve on {binding.describe()} without "
        "authentication. Anyone who can reach that address could read, change and delete "
        "labels and models. Either set 'auth_users' to a users file (see README, 'Roles and "
        "authentication'; `emlabel hash-password` makes the hashes) or listen on 127.0.0.1 "
        "(--host 127.0.0.1)."
    )


def own_origins(binding: Binding) -> list[str]:
    """Origins a browser shows for pages this server serves itself (e.g. OHIF)."""
    if not binding.port or binding.uds or binding.fd is not None:
        return []
    scheme = "https" if binding.ssl else "http"
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    host = (binding.host or "").strip()
    if host and not is_loopback_host(host):
        try:
            address = ipaddress.ip_address(host.strip("[]"))
            if not address.is_unspecified:
                hosts.append(f"[{address}]" if address.version == 6 else str(address))
        except ValueError:
            hosts.append(host.lower())
    default_port = 443 if binding.ssl else 80
    suffix = "" if binding.port == default_port else f":{binding.port}"
    return [f"{scheme}://{h}{suffix}" for h in hosts]


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


# --------------------------------------------------------------------------------- gate
async def _send_json(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _BodyCap:
    """Counts a request body as the app reads it; past the cap: 413 and a disconnect."""

    def __init__(self, receive: Receive, send: Send, limit: int, detail: str) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.detail = detail
        self.received = 0
        self.started = False
        self.cut = False

    async def receive(self) -> Message:
        if self.cut:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.cut = True
                if not self.started:
                    self.started = True
                    await _send_json(self._send, 413, self.detail, {"connection": "close"})
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.cut:
            return  # the 413 is out; drop whatever the app still sends
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class Gate:
    """ASGI middleware: body cap, Host check (auth off), bearer token and role (auth on)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator | None,
        max_body_bytes: int,
        rules: tuple[RouteRule, ...] | None = None,
        check_host: bool | None = None,
        origins: tuple[str, ...] | None = None,
    ) -> None:
        self.app = app
        self.origins = None if origins is None else frozenset(origins)
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.rules = rules if rules is not None else compile_rules()
        self.check_host = auth is None if check_host is None else check_host
        self.body_detail = (
            f"request body larger than {max_body_bytes >> 20} MB (setting 'max_upload_mb')"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)

        if kind == "http":
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    await _send_json(send, 400, f"bad Content-Length {length!r}")
                    return
                if int(length) > self.max_body_bytes:
                    await _send_json(send, 413, self.body_detail, {"connection": "close"})
                    return

        if kind == "http" and self._cross_site_write(scope, headers):
            await self._refuse(
                scope, receive, send, 403,
                "cross-site request refused: a page from another origin may not change this "
                "server (add its origin to the setting 'cors_origins' if it should)",
            )  # fmt: skip
            return

        if self.check_host and not _host_allowed(headers.get("host")):
            await self._refuse(
                scope, receive, send, 400,
                "Host header is not a loopback name: this server runs without authentication "
                "and answers only requests to 127.0.0.1 / localhost",
            )  # fmt: skip
            return

        if self.auth is not None:
            outcome = self._authorize(scope, headers)
            if isinstance(outcome, tuple):
                status, detail, extra = outcome
                await self._refuse(scope, receive, send, status, detail, extra)
                return
            if outcome is not None:
                scope = dict(scope)
                scope["state"] = {**(scope.get("state") or {}), STATE_KEY: outcome}

        if kind != "http":
            await self.app(scope, receive, send)
            return
        cap = _BodyCap(receive, send, self.max_body_bytes, self.body_detail)
        try:
            await self.app(scope, cap.receive, cap.send)
        except Exception:
            if not cap.cut:
                raise
            logger.info("EMLabel: request body over the cap cut off after %d bytes", cap.received)

    def _cross_site_write(self, scope: Scope, headers: Headers) -> bool:
        """An unsafe method sent by a browser page of a foreign origin (CSRF).

        CORS only hides the answer from such a page; a "simple" POST still runs. Browsers
        send ``Origin`` (and ``Sec-Fetch-Site``) with them; other clients send neither.
        """
        if self.origins is None or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return False
        origin = headers.get("origin")
        if origin is not None:
            return normalize_origin(origin) not in self.origins
        return headers.get("sec-fetch-site") == "cross-site"

    def _authorize(
        self, scope: Scope, headers: Headers
    ) -> AuthUser | tuple[int, str, dict[str, str]] | None:
        """The user (None on a public route), or (status, detail, headers) to refuse with."""
        assert self.auth is not None
        method = scope.get("method", "GET")
        path = _route_path(scope)
        role = required_role(method, path, self.rules)
        if role == PUBLIC:
            return None
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return (
                401,
                f"{method} {path} needs a bearer token (role '{role}'): log in with "
                "POST /auth/token (form fields username, password)",
                {"www-authenticate": _BEARER_REALM},
            )
        try:
            user = self.auth.verify(token.strip())
        except TokenError as e:
            return (
                401,
                e.reason,
                {"www-authenticate": f'{_BEARER_REALM}, error="invalid_token"'},
            )
        if not user.has_role(role):
            return (
                403,
                f"role '{role}' is required for {method} {path}; user '{user.name}' has "
                f"{', '.join(user.roles)}",
                {},
            )
        return user

    @staticmethod
    async def _refuse(
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        await _send_json(send, status, detail, headers)


def _route_path(scope: Scope) -> str:
    """The request path without the server's ``root_path`` (what the router matches)."""
    path: str = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        path = path[len(root) :]
    return path or "/"


def _host_allowed(host: str | None) -> bool:
    if host is None:
        return True  # not a browser (they always send Host)
    host = host.strip()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return is_loopback_host(name)


# ------------------------------------------------------------------------ login routes
def _authenticator(request: Request) -> Authenticator | None:
    return getattr(request.app.state, "emlabel_auth", None)


async def auth_info(request: Request) -> dict[str, Any]:
    """``GET /auth/``: whether clients must log in (MONAI Label's protocol)."""
    auth = _authenticator(request)
    return {
        "enabled": auth is not None,
        "client_id": ml_settings.MONAI_LABEL_AUTH_CLIENT_ID,
        "realm": "emlabel",
        "token_url": "/auth/token",
        "token_minutes": auth.token_minutes if auth is not None else None,
    }


async def auth_token(
    request: Request, form: OAuth2PasswordRequestForm = Depends()
) -> dict[str, Any]:
    """``POST /auth/token`` (form ``username``, ``password``): a bearer token, or 401."""
    auth = _authenticator(request)
    if auth is None:
        raise HTTPException(400, "authentication is off on this server (no 'auth_users')")
    record = await run_in_threadpool(auth.login, form.username, form.password)
    if record is None:
        logger.warning("EMLabel: failed login for user %r", form.username)
        raise HTTPException(
            401, "wrong user name or password", headers={"WWW-Authenticate": _BEARER_REALM}
        )
    logger.info("EMLabel: user %r logged in", record.name)
    return {
        "access_token": auth.issue(record),
        "token_type": "bearer",
        "expires_in": auth.token_minutes * 60,
    }


async def auth_token_valid(request: Request) -> dict[str, Any]:
    """``GET /auth/token/valid``: the token's user (the gate already checked the token)."""
    return _stock_user_of(request).model_dump()


def _stock_user_of(request: Request) -> Any:
    """MONAI Label's ``User`` for a request: the authenticated one, or its default user."""
    from monailabel.endpoints.user.auth import DEFAULT_USER, User

    user = request_auth_user(request)
    if user is not None:
        return User(username=user.name, name=user.name, roles=list(user.roles))
    if _authenticator(request) is None:
        return DEFAULT_USER
    return User(username="anonymous", name="anonymous", roles=[])


async def stock_current_user(request: Request) -> Any:
    """Override of MONAI Label's ``get_current_user``: no Keycloak, the gate's user."""
    return _stock_user_of(request)


def install_auth_routes(app: Any) -> None:
    """Put the login routes ahead of the stock ones (once)."""
    router = app.router
    router.routes[:] = [r for r in router.routes if getattr(r, "name", "") != _ROUTE_TAG]
    prefix = ml_settings.MONAI_LABEL_API_STR
    routes = [
        APIRoute(f"{prefix}/auth/", auth_info, methods=["GET"], name=_ROUTE_TAG, tags=["Auth"],
                 summary="Check If Auth is Enabled"),
        APIRoute(f"{prefix}/auth/token", auth_token, methods=["POST"], name=_ROUTE_TAG,
                 tags=["Auth"], summary="Fetch new access token (form: username, password)"),
        APIRoute(f"{prefix}/auth/token/valid", auth_token_valid, methods=["GET"],
                 name=_ROUTE_TAG, tags=["Auth"], summary="Check If current token is Valid"),
    ]  # fmt: skip
    for route in reversed(routes):
        router.routes.insert(0, route)


# ---------------------------------------------------------------------------- install
def install_gate(instance: Any = None) -> None:
    """Check the binding, then wrap MONAI Label's app in CORS + :class:`Gate` (server only)."""
    module = sys.modules.get("monailabel.app")
    if module is None:
        return
    if instance is None:
        from monailabel.interfaces.utils.app import app_instance

        instance = app_instance()
    settings = instance.settings
    app = module.app

    if ml_settings.MONAI_LABEL_AUTH_ENABLE:
        raise SystemExit(
            "EMLabel: bad configuration: MONAI_LABEL_AUTH_ENABLE is true, but EMLabel checks "
            "tokens itself (setting 'auth_users') and has no Keycloak; set "
            "MONAI_LABEL_AUTH_ENABLE=false"
        )
    app_dir = Path(getattr(instance, "app_dir", None) or ml_settings.MONAI_LABEL_APP_DIR)
    try:
        auth = Authenticator.from_settings(settings, app_dir)
    except AuthConfigError as e:
        raise SystemExit(f"EMLabel: bad configuration: {e.message}") from e
    binding = server_binding()
    check_binding(binding, auth is not None)

    from monailabel.endpoints.user.auth import get_current_user

    app.state.emlabel_auth = auth
    install_auth_routes(app)
    app.dependency_overrides[get_current_user] = stock_current_user

    origins = list(
        dict.fromkeys(
            [normalize_origin(o) for o in settings.cors_origins]
            + [normalize_origin(o) for o in own_origins(binding)]
        )
    )
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    stack = app.build_middleware_stack()
    gate = Gate(
        stack, auth=auth, max_body_bytes=settings.max_upload_mb << 20, origins=tuple(origins)
    )
    app.middleware_stack = CORSMiddleware(
        gate,
        allow_origins=origins,
        allow_credentials=True,
        allow_methods=_CORS_METHODS,
        allow_headers=["*"],
        expose_headers=["Content-Disposition"],
    )
    logger.info(
        "EMLabel gate: auth %s; listening on %s (from %s); CORS origins %s; body cap %d MB",
        f"on ({len(auth.users())} users in {auth.users_file})" if auth else "off (loopback only)",
        binding.describe(),
        binding.source,
        ", ".join(origins) or "(none)",
        settings.max_upload_mb,
    )
