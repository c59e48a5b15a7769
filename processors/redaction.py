"""Secrets out of exported strings: URL query values and userinfo, the quoted
parts of error texts, credentials in command lines.

Everything here runs on other people's traffic and argv, so it errs on the side
of removing too much. HTTP follows the semantic conventions for `url.query` and
`url.full` (values of sensitive query keys and any userinfo become "REDACTED").
SQL literals are the SQL sanitiser's job (`protocols/sql.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_plus

from otel_ebpf.processors.protocols.numbers import decimal

REDACTED: Final = "REDACTED"
# The HTTP conventions' list: always redacted.
CONVENTION_QUERY_KEYS: Final = ("AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature")
# Added by default (receivers.ebpf.redaction.query_keys replaces this list).
DEFAULT_QUERY_KEYS: Final = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "auth",
    "authorization",
    "session",
    "sessionid",
    "code",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
)
MAX_MESSAGE: Final = 256  # characters of an error text kept


def without_userinfo(authority: str) -> str:
    """`user:pw@host:port` -> `REDACTED:REDACTED@host:port` (the conventions' form)."""
    at = authority.rfind("@")
    return authority if at < 0 else f"{REDACTED}:{REDACTED}@{authority[at + 1 :]}"


def host_of(authority: str) -> str:
    """The host[:port] of an authority (Host header, :authority): no userinfo at all."""
    return authority[authority.rfind("@") + 1 :]


def host_port(host: str) -> tuple[str, int | None]:
    """A Host header's (or :authority's) host and port (None when it names none)."""
    if host.startswith("["):  # [v6]:port
        addr, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        addr, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return addr, decimal(port) if port else None


class UrlRedactor:
    """Redacts values of sensitive query keys (matched without case, after
    percent-decoding) and userinfo in absolute-form targets."""

    def __init__(self, extra_keys: Iterable[str] = DEFAULT_QUERY_KEYS) -> None:
        self._keys = frozenset(k.lower() for k in (*CONVENTION_QUERY_KEYS, *extra_keys))

    def split(self, target: str) -> tuple[str, str | None, str | None]:
        """A request target -> (url.path, url.query, scheme://authority of an
        absolute-form target), redacted: no userinfo, no sensitive query value."""
        if target.startswith("/"):  # origin-form, nearly every request
            path, sep, query = target.partition("?")
            return path, self.query(query) if sep else None, None
        absolute = None
        scheme, sep, rest = target.partition("://")
        if sep and "/" not in scheme and "?" not in scheme:
            end = len(rest)
            for stop in "/?#":
                i = rest.find(stop)
                if 0 <= i < end:
                    end = i
            absolute = f"{scheme}://{without_userinfo(rest[:end])}"
            target = rest[end:] or "/"
        path, sep, query = target.partition("?")
        return path, self.query(query) if sep else None, absolute

    def query(self, query: str) -> str:
        if "=" not in query:
            return query
        parts = query.split("&")
        changed = False
        for i, part in enumerate(parts):
            key, sep, value = part.partition("=")
            if sep and value and self._sensitive(key):
                parts[i] = f"{key}={REDACTED}"
                changed = True
        return "&".join(parts) if changed else query

    def _sensitive(self, key: str) -> bool:
        key = key.lower()
        if key in self._keys:
            return True
        return ("%" in key or "+" in key) and unquote_plus(key).lower() in self._keys


# Quoted parts of an error text carry the offending value ("invalid input syntax
# for type integer: \"...\"", "ERR unknown subcommand '...'"); so may numbers.
# An unterminated quote (a cut capture) runs to the end.
_MESSAGE_DATA: Final = re.compile(r"'[^']*'?|\"[^\"]*\"?|`[^`]*`?|\d+")


def scrub_message(text: str | None) -> str | None:
    """An error text with quoted values and numbers replaced by '?', bounded."""
    if not text:
        return text
    return _MESSAGE_DATA.sub("?", text[: MAX_MESSAGE * 4])[:MAX_MESSAGE]


_SECRET_FLAGS: Final = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "client-secret",
        "token",
        "auth-token",
        "access-token",
        "api-key",
        "apikey",
        "auth",
        "requirepass",
        "masterauth",
    }
)
# Short flags that take a password, by program: `redis-cli -a PW`, `mysql -pPW`.
_SHORT_SECRET_FLAGS: Final = {
    "redis-cli": "-a",
    "mysql": "-p",
    "mariadb": "-p",
    "mysqldump": "-p",
    "mariadb-dump": "-p",
    "mysqladmin": "-p",
    "mariadb-admin": "-p",
    "sshpass": "-p",
}
_URL_USERINFO: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
_KEY_VALUE: Final = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api_?key|access_token|client_secret)"
    r"(\s*[=:]\s*)('[^']*'?|\"[^\"]*\"?|[^\s&;]+)"
)


def scrub_argv(argv: list[str]) -> list[str]:
    """Command-line arguments with credentials replaced: URL userinfo, values of
    credential flags (`--password PW`, `--token=PW`, `redis-cli -a PW`, `mysql -pPW`)
    and `password=...` pairs (libpq conninfo)."""
    if not argv:
        return argv
    program = argv[0].rsplit("/", 1)[-1]
    short = _SHORT_SECRET_FLAGS.get(program)
    out: list[str] = []
    redact_next = False
    for arg in argv:
        if redact_next:
            out.append(REDACTED)
            redact_next = False
            continue
        name, eq, _ = arg.partition("=")
        if arg.startswith("--") and name[2:].lower() in _SECRET_FLAGS:
            if eq:
                out.append(f"{name}={REDACTED}")
            else:
                out.append(arg)
                redact_next = True
            continue
        if short is not None and arg.startswith(short):
            if arg == short:
                redact_next = True
                out.append(arg)
            else:
                out.append(short + REDACTED)
            continue
        arg = _URL_USERINFO.sub(rf"\1{REDACTED}:{REDACTED}@", arg)
        out.append(_KEY_VALUE.sub(rf"\1\2{REDACTED}", arg))
    return out
