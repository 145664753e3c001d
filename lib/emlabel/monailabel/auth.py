"""Users, password hashes, bearer tokens and the role table of EMLabel's REST API.

Stock MONAI Label forwards a password grant to a Keycloak server and lets any route
through when that is off. EMLabel checks every request itself (``emlabel.monailabel.gate``)
against :data:`ROUTE_ROLES`, with users from a local file (setting ``auth_users``)::

    {"users": {"alice": {"password_hash": "$pbkdf2-sha256$...", "roles": ["annotator"]}}}

Passwords are stored as passlib ``pbkdf2_sha256`` hashes (``emlabel hash-password``
prints one). ``POST /auth/token`` trades a user name and password for an HS256 bearer
token (PyJWT) signed with the secret in ``auth_secret_file``. Roles are ranked: a
``reviewer`` may do everything an ``annotator`` may, an ``admin`` everything a reviewer may.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt

from emlabel.errors import EMLabelError

logger = logging.getLogger(__name__)

PUBLIC = "public"
ANNOTATOR = "annotator"
REVIEWER = "reviewer"
ADMIN = "admin"
#: The roles, lowest first; each role includes the rights of the roles before it.
ROLES: tuple[str, ...] = (ANNOTATOR, REVIEWER, ADMIN)
_RANK = {PUBLIC: 0, **{role: rank for rank, role in enumerate(ROLES, start=1)}}

#: Method + path pattern (Starlette syntax, MONAI Label 0.8.5 + EMLabel routes) -> the
#: lowest role allowed. HEAD falls back to the GET rule; a request no rule matches needs
#: ``admin``; when several rules match, the highest role wins.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    # API explorer, static files, the OHIF viewer's files
    ("GET", "/"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/favicon.ico"): PUBLIC,
    ("GET", "/static/{path:path}"): PUBLIC,
    ("GET", "/ohif/{path:path}"): PUBLIC,
    # login (MONAI Label's client protocol)
    ("GET", "/auth/"): PUBLIC,
    ("POST", "/auth/token"): PUBLIC,
    ("GET", "/auth/token/valid"): ANNOTATOR,
    # what the app serves (Slicer and OHIF read it before they log in)
    ("GET", "/info/"): PUBLIC,
    # inference
    ("POST", "/infer/{model}"): ANNOTATOR,
    ("POST", "/infer/wsi/{model}"): ANNOTATOR,
    ("POST", "/infer/wsi_v2/{model}"): ANNOTATOR,
    ("GET", "/session/{session_id}"): ANNOTATOR,
    ("PUT", "/session/"): ANNOTATOR,
    ("DELETE", "/session/{session_id}"): ANNOTATOR,
    ("POST", "/batch/infer/{model}"): ADMIN,
    ("GET", "/batch/infer"): ADMIN,
    ("DELETE", "/batch/infer"): ADMIN,
    # active learning, training, scoring
    ("POST", "/activelearning/{strategy}"): ANNOTATOR,
    ("GET", "/train/"): ANNOTATOR,
    ("POST", "/train/"): REVIEWER,
    ("POST", "/train/{model}"): REVIEWER,
    ("DELETE", "/train/"): REVIEWER,
    ("GET", "/scoring/"): ANNOTATOR,
    ("POST", "/scoring/"): REVIEWER,
    ("POST", "/scoring/{method}"): REVIEWER,
    ("DELETE", "/scoring/"): REVIEWER,
    # models
    ("GET", "/model/{model}"): ADMIN,
    ("GET", "/model/info/{model}"): ADMIN,
    ("PUT", "/model/{model}"): ADMIN,
    ("DELETE", "/model/{model}"): ADMIN,
    ("GET", "/emlabel/bundle/{model}"): REVIEWER,
    ("GET", "/emlabel/review/"): ANNOTATOR,
    # datastore: read
    ("GET", "/datastore/"): ANNOTATOR,
    ("HEAD", "/datastore/image"): ANNOTATOR,
    ("GET", "/datastore/image"): ANNOTATOR,
    ("GET", "/datastore/image/info"): ANNOTATOR,
    ("HEAD", "/datastore/label"): ANNOTATOR,
    ("GET", "/datastore/label"): ANNOTATOR,
    ("GET", "/datastore/label/info"): ANNOTATOR,
    ("GET", "/datastore/dataset"): ANNOTATOR,
    # datastore: write
    ("PUT", "/datastore/label"): ANNOTATOR,
    ("PUT", "/emlabel/stats"): ANNOTATOR,
    ("PUT", "/datastore/image/info"): REVIEWER,
    ("PUT", "/datastore/label/info"): REVIEWER,
    ("PUT", "/datastore/updatelabelinfo"): REVIEWER,
    ("PUT", "/datastore/image"): ADMIN,
    ("PUT", "/datastore/"): ADMIN,
    ("DELETE", "/datastore/image"): ADMIN,
    ("DELETE", "/datastore/"): ADMIN,
    ("DELETE", "/datastore/label"): ADMIN,
    # DICOMweb proxy: reading images is annotator work; a POST is forwarded as a POST to the
    # DICOMweb server (whatever the prefix), i.e. a STOW that bypasses label validation
    ("GET", "/proxy/dicom/qido/{path:path}"): ANNOTATOR,
    ("POST", "/proxy/dicom/qido/{path:path}"): ADMIN,
    ("GET", "/proxy/dicom/wado/{path:path}"): ANNOTATOR,
    ("POST", "/proxy/dicom/wado/{path:path}"): ADMIN,
    ("GET", "/proxy/dicom/stow/{path:path}"): ANNOTATOR,
    ("POST", "/proxy/dicom/stow/{path:path}"): ADMIN,
    ("GET", "/proxy/dicom/{path:path}"): ANNOTATOR,
    ("POST", "/proxy/dicom/{path:path}"): ADMIN,
    # server administration
    ("GET", "/logs/"): ADMIN,
    ("GET", "/logs/gpu"): ADMIN,
    ("POST", "/reload"): ADMIN,
}

#: Paths of :data:`ROUTE_ROLES` that MONAI Label serves outside ``MONAI_LABEL_API_STR``.
UNPREFIXED_PATHS = frozenset({"/", "/openapi.json", "/docs", "/favicon.ico", "/static/{path:path}"})

#: Where the gate puts the authenticated :class:`AuthUser` (``scope["state"][STATE_KEY]``).
STATE_KEY = "emlabel_user"

TOKEN_ISSUER = "emlabel"
TOKEN_ALGORITHM = "HS256"
#: PBKDF2-SHA256 iterations of new hashes (OWASP 2023); verifying takes ~0.2 s on one core.
HASH_ROUNDS = 600_000
_USER_KEYS = frozenset({"password_hash", "roles", "name", "email"})


class AuthConfigError(EMLabelError):
    """A users file or secret file the server cannot use."""


class TokenError(Exception):
    """A bearer token that is missing, malformed, badly signed, expired or revoked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------- role table
@dataclasses.dataclass(frozen=True)
class RouteRule:
    method: str
    pattern: str
    role: str
    regex: re.Pattern[str]


def role_rank(role: str) -> int:
    return _RANK[role]


def compile_rules(
    table: Mapping[tuple[str, str], str] = ROUTE_ROLES, prefix: str = ""
) -> tuple[RouteRule, ...]:
    """The table as regular expressions (``prefix``: MONAI Label's ``MONAI_LABEL_API_STR``)."""
    from starlette.routing import compile_path

    rules = []
    for (method, pattern), role in table.items():
        if role not in _RANK:
            raise ValueError(f"unknown role {role!r} for {method} {pattern}")
        full = pattern if pattern in UNPREFIXED_PATHS else prefix.rstrip("/") + pattern
        regex, _, _ = compile_path(full)
        rules.append(RouteRule(method.upper(), full, role, regex))
    return tuple(rules)


_DEFAULT_RULES = compile_rules()


def _path_variants(path: str) -> tuple[str, ...]:
    """``path`` with and without its trailing slash (the router redirects between them)."""
    if path == "/":
        return (path,)
    return (path, path.rstrip("/")) if path.endswith("/") else (path, path + "/")


def rule_for(method: str, path: str, rules: Iterable[RouteRule] | None = None) -> str | None:
    """The lowest role a table rule allows for ``method path``; None when no rule matches."""
    rules = tuple(_DEFAULT_RULES if rules is None else rules)
    method = method.upper()
    for wanted in (method, "GET") if method == "HEAD" else (method,):
        roles = [
            rule.role
            for rule in rules
            if rule.method == wanted and any(rule.regex.match(p) for p in _path_variants(path))
        ]
        if roles:
            return max(roles, key=role_rank)
    return None


def required_role(method: str, path: str, rules: Iterable[RouteRule] | None = None) -> str:
    """The role a request needs: its table rule, ``admin`` for anything else."""
    return rule_for(method, path, rules) or ADMIN


# ---------------------------------------------------------------------------------- users
@dataclasses.dataclass(frozen=True)
class AuthUser:
    """An authenticated user, as the gate stores it in ``scope["state"]["emlabel_user"]``."""

    name: str
    roles: tuple[str, ...]

    @property
    def rank(self) -> int:
        return max((role_rank(r) for r in self.roles), default=0)

    def has_role(self, role: str) -> bool:
        return self.rank >= role_rank(role)

    @property
    def top_role(self) -> str | None:
        return max(self.roles, key=role_rank) if self.roles else None


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """One entry of the users file."""

    name: str
    password_hash: str
    roles: tuple[str, ...]
    email: str | None = None

    def as_user(self) -> AuthUser:
        return AuthUser(self.name, self.roles)

    @property
    def fingerprint(self) -> str:
        """Changes with the password hash, so a new password revokes older tokens."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


def hash_password(password: str, *, rounds: int = HASH_ROUNDS) -> str:
    """A passlib ``pbkdf2_sha256`` hash of ``password`` for the users file."""
    from passlib.hash import pbkdf2_sha256

    if not password:
        raise ValueError("the password is empty")
    return pbkdf2_sha256.using(rounds=rounds).hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    from passlib.hash import pbkdf2_sha256

    try:
        return bool(password) and pbkdf2_sha256.verify(password, password_hash)
    except (ValueError, TypeError):
        return False


def _is_pbkdf2_hash(value: Any) -> bool:
    from passlib.hash import pbkdf2_sha256

    return isinstance(value, str) and pbkdf2_sha256.identify(value)


def _read_users_document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise AuthConfigError(
                f"users file {path} is YAML but pyyaml is not installed; use JSON"
            ) from e
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise AuthConfigError(f"users file {path} is not valid YAML: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AuthConfigError(f"users file {path} is not valid JSON: {e}") from e


def parse_users(document: Any, *, source: str = "users file") -> dict[str, UserRecord]:
    """Check a users document (``{"users": {name: {...}}}``); errors name the user."""
    if not isinstance(document, dict) or not isinstance(document.get("users"), dict):
        raise AuthConfigError(f'{source} must hold an object {{"users": {{name: {{...}}}}}}')
    users: dict[str, UserRecord] = {}
    for name, entry in document["users"].items():
        where = f"{source}: user {name!r}"
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise AuthConfigError(f"{where}: a user name must be non-empty text without spaces")
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{where}: expected an object with password_hash and roles")
        if "password" in entry:
            raise AuthConfigError(
                f"{where}: store 'password_hash' (from `emlabel hash-password`), never 'password'"
            )
        unknown = sorted(k for k in entry if k not in _USER_KEYS and not str(k).startswith("_"))
        if unknown:
            raise AuthConfigError(
                f"{where}: unknown keys {unknown}; valid: {', '.join(sorted(_USER_KEYS))}"
            )
        if not _is_pbkdf2_hash(entry.get("password_hash")):
            raise AuthConfigError(
                f"{where}: 'password_hash' must be a pbkdf2_sha256 hash from "
                "`emlabel hash-password`"
            )
        roles = entry.get("roles")
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
            raise AuthConfigError(
                f"{where}: 'roles' must be a non-empty list of {', '.join(ROLES)}; got {roles!r}"
            )
        email = entry.get("email")
        users[name] = UserRecord(
            name=name,
            password_hash=entry["password_hash"],
            roles=tuple(dict.fromkeys(roles)),
            email=email if isinstance(email, str) else None,
        )
    if not users:
        raise AuthConfigError(f"{source} lists no users")
    return users


def load_users(path: Path) -> dict[str, UserRecord]:
    """Read and check the users file (JSON; YAML when it ends in .yaml/.yml)."""
    try:
        document = _read_users_document(path)
    except FileNotFoundError as e:
        raise AuthConfigError(f"users file {path} does not exist") from e
    except OSError as e:
        raise AuthConfigError(f"users file {path} cannot be read: {e}") from e
    return parse_users(document, source=f"users file {path}")


# --------------------------------------------------------------------------------- secret
def load_or_create_secret(path: Path) -> bytes:
    """The token signing secret in ``path``; a new random one (mode 0600) if it is missing."""
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".auth-secret-", dir=path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(32) + "\n")
                with contextlib.suppress(FileExistsError):  # another worker was first
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise AuthConfigError(f"cannot create the secret file {path}: {e}") from e
        logger.info("EMLabel: created the token signing secret %s (mode 0600)", path)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise AuthConfigError(f"secret file {path} cannot be read: {e}") from e
    if len(secret) < 32:
        raise AuthConfigError(
            f"secret file {path} holds fewer than 32 characters; delete it to get a new one"
        )
    if path.stat().st_mode & 0o077:
        logger.warning("EMLabel: secret file %s is readable by other users (chmod 600 it)", path)
    return secret.encode()


# --------------------------------------------------------------------------------- tokens
def issue_token(user: UserRecord, secret: bytes, *, minutes: int, now: float | None = None) -> str:
    """A signed HS256 bearer token for ``user`` valid for ``minutes``."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": user.name,
        "roles": list(user.roles),
        "pwd": user.fingerprint,
        "iat": issued,
        "exp": issued + minutes * 60,
    }
    return jwt.encode(claims, secret, algorithm=TOKEN_ALGORITHM)


def decode_token(token: str, secret: bytes) -> dict[str, Any]:
    """The claims of a valid, unexpired token; :class:`TokenError` saying why otherwise."""
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=[TOKEN_ALGORITHM],
            issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise TokenError("the token has expired; log in again") from e
    except jwt.InvalidTokenError as e:
        raise TokenError(f"the token is not valid ({e})") from e


class Authenticator:
    """The server's users, secret and token lifetime; re-reads the users file when it changes.

    A token is only honoured while its user is still in the users file with the same
    password hash; the roles are the file's current ones.
    """

    def __init__(self, users_file: Path, secret: bytes, *, token_minutes: int) -> None:
        self.users_file = users_file
        self.secret = secret
        self.token_minutes = token_minutes
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._users = load_users(users_file)
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, app_dir: Path) -> Authenticator | None:
        """None when ``auth_users`` is empty; :class:`AuthConfigError` for a bad file."""
        if not settings.auth_users:
            return None
        users_file = _resolve(settings.auth_users, app_dir)
        secret_file = (
            _resolve(settings.auth_secret_file, app_dir)
            if settings.auth_secret_file
            else app_dir / "model" / ".auth-secret"
        )
        try:
            secret = load_or_create_secret(secret_file)
        except AuthConfigError as e:
            raise AuthConfigError(f"setting 'auth_secret_file': {e.message}") from e
        try:
            return cls(users_file, secret, token_minutes=settings.auth_token_minutes)
        except AuthConfigError as e:
            raise AuthConfigError(f"setting 'auth_users': {e.message}") from e

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.users_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def users(self) -> dict[str, UserRecord]:
        """The users, re-read when the file changed (a broken file keeps the last good one)."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._users = load_users(self.users_file)
                        logger.info("EMLabel: re-read users file %s", self.users_file)
                    except AuthConfigError as e:
                        logger.error("EMLabel: %s; keeping the previous users", e.message)
        return self._users

    def login(self, username: str, password: str) -> UserRecord | None:
        """The user whose name and password match, else None (same cost either way)."""
        record = self.users().get(username)
        if record is None:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password(secrets.token_hex(16))
            verify_password(password, self._dummy_hash)
            return None
        return record if verify_password(password, record.password_hash) else None

    def issue(self, user: UserRecord, *, now: float | None = None) -> str:
        return issue_token(user, self.secret, minutes=self.token_minutes, now=now)

    def verify(self, token: str) -> AuthUser:
        """The user a valid token belongs to; :class:`TokenError` otherwise."""
        claims = decode_token(token, self.secret)
        record = self.users().get(claims["sub"])
        if record is None or claims.get("pwd") != record.fingerprint:
            raise TokenError("the token's user or password has changed; log in again")
        return record.as_user()


def _resolve(value: str, app_dir: Path) -> Path:
    """A path as given, or relative to the app folder when it does not exist as given."""
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists() and (app_dir / path).exists():
        return app_dir / path
    return path


# ---------------------------------------------------------------------------- for routes
def request_user(request: Any) -> str | None:
    """The authenticated user's name for a Starlette/FastAPI request (None when auth is off)."""
    state = getattr(request, "scope", {}).get("state") or {}
    user = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    return user.name if isinstance(user, AuthUser) else None


def request_auth_user(request: Any) -> AuthUser | None:
    """The authenticated :class:`AuthUser` (name and roles), None when auth is off."""
    state = getattr(request, "scope", {}).get("state") or {}
    user = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    return user if isinstance(user, AuthUser) else None
