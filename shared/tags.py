"""Tags: what a value may carry (from its origin's answer or its namespace's rule), checked here, in pure Python.

A tag is 1-MAX_TAG_BYTES bytes of UTF-8 without control characters. It reaches a value from
- the origin's answer: the header the namespace names (``tag_header``, default
  ``Surrogate-Key``), tags separated by spaces as Fastly sends them; a Python callable returns
  them in ``OriginValue(value, tags=[...])``;
- the namespace: ``tags = ["catalog", "product:{key}"]``, ``{key}`` replaced by the key.

A value keeps at most MAX_TAGS_PER_VALUE tags (its namespace's first, then the origin's in the
order sent); an origin's tag that breaks the rules is dropped, not the value. Stored with the
value (entry field ``tg``) joined by newlines: neither a tag nor a key can hold one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

MAX_TAG_BYTES = 1024
MAX_TAGS_PER_VALUE = 64
PURGE_MAX_TAGS = 1000  # most tags one POST /v1/purge may name
MAX_RULE_BYTES = 256  # a namespace's tag rule before {key} is filled in (a key is <= 512 bytes)
DEFAULT_TAG_HEADER = "Surrogate-Key"
KEY_PLACEHOLDER = "{key}"
SEPARATOR = "\n"


class InvalidTag(ValueError):
    """The tag is not acceptable; the message says why."""


def validate_tag(tag: str, limit: int = MAX_TAG_BYTES) -> str:
    if not tag:
        raise InvalidTag("tag is empty")
    try:
        size = len(tag.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidTag("tag is not valid UTF-8") from None
    if size > limit:
        raise InvalidTag(f"tag is {size} bytes of UTF-8; the limit is {limit}")
    for ch in tag:
        if unicodedata.category(ch) == "Cc":
            raise InvalidTag(f"tag contains the control character U+{ord(ch):04X}")
    return tag


def validate_rule(rule: str) -> str:
    """A namespace's tag rule: a tag in which {key} may stand once for the key."""
    validate_tag(rule, MAX_RULE_BYTES)
    if rule.count(KEY_PLACEHOLDER) > 1:
        raise InvalidTag("a tag rule may hold {key} once")
    return rule


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token


def tag_options(raw: dict[str, Any], bad: Callable[[str, str], NoReturn]) -> dict[str, Any]:
    """A namespace's `tags = ["catalog", "product:{key}"]` and `tag_header = "Surrogate-Key"`, as
    Namespace fields; `bad(field, problem)` raises for a bad one."""
    rules = raw.get("tags", [])
    if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
        bad("tags", 'must be a list of strings, e.g. tags = ["catalog", "product:{key}"]')
    for rule in rules:
        try:
            validate_rule(rule)
        except InvalidTag as exc:
            bad("tags", f"{rule!r}: {exc}")
    header = raw.get("tag_header", DEFAULT_TAG_HEADER)
    if not isinstance(header, str) or not _HEADER_NAME_RE.match(header):
        bad("tag_header", f"{header!r} is not a valid HTTP header name")
    return {"tags": tuple(dict.fromkeys(rules)), "tag_header": header}


def _acceptable(tag: str) -> bool:
    try:
        validate_tag(tag)
    except InvalidTag:
        return False
    return True


def header_tags(value: str | None) -> tuple[str, ...]:
    """The tags of a Surrogate-Key-style header: space-separated, unacceptable ones dropped."""
    if not value:
        return ()
    return tuple(tag for tag in value.split() if _acceptable(tag))


def callable_tags(tags: Iterable[object] | None) -> tuple[str, ...]:
    """The tags a callable returned in OriginValue: strings only, unacceptable ones dropped."""
    if tags is None or isinstance(tags, str | bytes):
        return ()
    return tuple(tag for tag in tags if isinstance(tag, str) and _acceptable(tag))


def value_tags(rules: Iterable[str], key: str, origin_tags: Iterable[str] = ()) -> tuple[str, ...]:
    """Every tag a value of `key` carries: the namespace's rules filled in, then the origin's;
    duplicates once, at most MAX_TAGS_PER_VALUE."""
    out: dict[str, None] = {}
    for tag in [rule.replace(KEY_PLACEHOLDER, key) for rule in rules] + list(origin_tags):
        if len(out) >= MAX_TAGS_PER_VALUE:
            break
        out.setdefault(tag, None)
    return tuple(out)


def join_tags(tags: Iterable[str]) -> str:
    return SEPARATOR.join(tags)


def split_tags(stored: str) -> tuple[str, ...]:
    return tuple(t for t in stored.split(SEPARATOR) if t)


def member(namespace: str, key: str) -> str:
    """A group index's member for one cache key (neither part can hold a newline)."""
    return f"{namespace}{SEPARATOR}{key}"


def parse_member(raw: str) -> tuple[str, str] | None:
    namespace, sep, key = raw.partition(SEPARATOR)
    return (namespace, key) if sep and namespace and key else None
