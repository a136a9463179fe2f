"""Request-target safety for proxy namespaces: which namespace a raw request target belongs to,
and the exact bytes forwarded to its origin.

The target is taken from the raw request URI (gunicorn's RAW_URI; REQUEST_URI elsewhere), never
from the decoded PATH_INFO, and forwarded byte for byte: ``GET /catalog/a%20b?x=1&y`` reaches
``<proxy base>/a%20b?x=1&y``. Forwarding is string concatenation onto the configured scheme,
host, port and base path, and the rest must start with "/" — so no target can change the
origin's scheme, host or port. What could make the *origin* climb above the base path or read
the target as another host is refused (400 JSON), never normalised or forwarded:

- an absolute-form (``GET http://evil/ HTTP/1.1``) or asterisk-form target;
- dot segments (``.``, ``..``), percent-encoded (``%2e%2e``) or double-encoded (``%252e``),
  also when an encoded slash or backslash would make one (``..%2f``) or a path parameter
  hides one (``..;x``);
- an empty segment (``//evil``), a backslash (raw or ``%5c``), an ``@`` in the path;
- control characters, spaces, non-ASCII bytes or a ``#`` anywhere, a malformed ``%`` escape;
- a target longer than MAX_TARGET_BYTES (414), a request header longer than
  MAX_HEADER_FIELD_BYTES or headers longer than MAX_HEADER_BYTES in all (431).

A request line or header that gunicorn itself refuses (raw CR/LF, past its own limits, which
web/gunicorn.conf.py sets above these) is answered by gunicorn with its plain 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from shared.namespaces import Namespace

MAX_TARGET_BYTES = 4096
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADER_BYTES = 32768
# Printable ASCII without space, '#', '\' (RFC 3986 allows neither raw in a target).
_SAFE_TARGET = re.compile(r"^[!$%&'()*+,\-./0-9:;=?@A-Z\[\]^_`a-z{|}~\"<>]*$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class TargetError(Exception):
    """A target that is never forwarded: HTTP status, error code, detail."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class ProxyTarget:
    """A validated proxied request target. `target` is the path after the mount plus the query,
    as sent ("" for the mount itself, else starting with "/"): the cache key's input."""

    ns: Namespace
    target: str

    @property
    def upstream_url(self) -> str:
        assert self.ns.proxy is not None
        return self.ns.proxy.upstream_url(self.target)


def raw_target(environ: Mapping[str, object]) -> str | None:
    """The request target exactly as sent, or None when the server passes none (only PATH_INFO)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return raw if isinstance(raw, str) and raw else None


def mount_of(raw: str, mounts: Iterable[tuple[str, Namespace]]) -> Namespace | None:
    """The proxy namespace whose mount the raw target falls under, if any (a cheap prefix test,
    made on every request before routing)."""
    path = raw.partition("?")[0]
    for mount, ns in mounts:
        if path == mount or path.startswith(mount + "/"):
            return ns
    return None


def _has_dot_segment(path: str) -> bool:
    """Would an origin that decodes the path (once or twice) see a "." or ".." segment? A
    segment's path parameters count for nothing: Tomcat, Jetty and Spring read "..;x" as ".."."""
    candidate = path
    for _ in range(3):  # as sent, decoded once, decoded twice
        parts = re.split(r"[/\\]", candidate)
        if any(p.partition(";")[0] in (".", "..") for p in parts):
            return True
        decoded = unquote(candidate, errors="replace")
        if decoded == candidate:
            return False
        candidate = decoded
    return False


def parse_target(raw: str, ns: Namespace) -> ProxyTarget:
    """Validate a raw target under `ns`'s mount; TargetError says why it is refused."""
    assert ns.proxy is not None
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_TARGET_BYTES:
        raise TargetError(414, "uri_too_long", f"the request target is longer than {MAX_TARGET_BYTES} bytes")
    if not raw.startswith("/"):
        raise TargetError(400, "invalid_target", "only origin-form targets (/path?query) are proxied")
    if not _SAFE_TARGET.match(raw):
        raise TargetError(
            400, "invalid_target", "the target holds a space, control character, '#', '\\' or a non-ASCII byte"
        )
    if _BAD_ESCAPE.search(raw):
        raise TargetError(400, "invalid_target", "the target holds a '%' that is not a %XX escape")
    path, sep, query = raw.partition("?")
    mount = ns.proxy.mount
    rest = path[len(mount) :]
    if rest and not rest.startswith("/"):
        raise TargetError(404, "not_found", "no such route")
    decoded_once = unquote(path, errors="replace")
    if "\\" in decoded_once or "%5c" in path.lower():
        raise TargetError(400, "invalid_target", "the path holds a backslash")
    if "@" in path:
        raise TargetError(400, "invalid_target", "the path holds an '@'")
    if "//" in path:
        raise TargetError(400, "invalid_target", "the path holds an empty segment ('//')")
    if _has_dot_segment(path):
        raise TargetError(400, "invalid_target", "the path holds a dot segment ('.' or '..', encoded or not)")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in unquote(raw, errors="replace")):
        raise TargetError(400, "invalid_target", "the target encodes a control character (CR, LF, NUL...)")
    return ProxyTarget(ns, rest + (sep + query if sep else ""))


def check_header_sizes(headers: Iterable[tuple[str, str]]) -> None:
    """431 for one header field, or all of them, past the forwarded limits."""
    total = 0
    for name, value in headers:
        size = len(name) + len(value) + 4
        if size > MAX_HEADER_FIELD_BYTES:
            raise TargetError(
                431, "header_too_large", f"the {name[:40]} header is longer than {MAX_HEADER_FIELD_BYTES} bytes"
            )
        total += size
    if total > MAX_HEADER_BYTES:
        raise TargetError(
            431, "headers_too_large", f"the request headers are longer than {MAX_HEADER_BYTES} bytes in all"
        )
