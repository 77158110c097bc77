"""The one masking rule for params that leave the queue (show, --json, CSV, report, MLflow, logs, errors).

A value is hidden when

* its key names a secret: one of the words `password`, `passwd`, `pwd`, `secret`, `token`,
  `apikey`, `credential(s)`, or a name ending in `_key` (`api_key`, `aws_secret_access_key`);
  words are split at `_`, `-`, `.` and camelCase, case-insensitively, so `api_token`, `dbPassword`
  and `client-secret` count while `max_tokens` and `keyboard` do not. The whole value goes,
  whatever its type (`***`);
* or it is text holding a URL's userinfo password (`postgresql://alice:pw@host`) or a
  `password=...` setting: only the password goes (`postgresql://alice:***@host`), as
  config.mask_password does for every printed line.

The job itself gets the real values: masking happens only where params are shown or sent out.
Text that may quote a param (an error, a log line) is scrubbed of the job's secret values with
`Secrets.scrub`. Nothing here imports more than the standard library and sweeper.config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sweeper.config import mask_password, passwords_in

MASK = "***"
SECRET_WORDS = frozenset({"password", "passwd", "pwd", "secret", "token", "apikey", "credential", "credentials"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[_\-.\s]+")
# A secret shorter than this is not searched for inside free text (a one-letter "secret" would
# turn every log line into asterisks); it is still masked as a param value.
MIN_SCRUB = 3


def key_words(key: str) -> list[str]:
    return [w.lower() for w in _SEPARATORS.split(_CAMEL.sub("_", str(key))) if w]


def is_secret_key(key: str) -> bool:
    """Whether a param name (its last dotted part, or any part) names a secret."""
    words = key_words(key)
    if any(w in SECRET_WORDS for w in words):
        return True
    # `*_key`: api_key, private_key, aws_secret_access_key; a bare `key` is a name, not a secret
    return len(words) >= 2 and words[-1] == "key"


def mask_text(text: str) -> str:
    """A URL's userinfo password and `password=...` settings in text, masked."""
    return mask_password(text)


def mask_params(value: Any, key: str = "") -> Any:
    """A copy of params (any nesting of mappings and lists) with the rule applied to every value."""
    if key and is_secret_key(key):
        return MASK
    if isinstance(value, Mapping):
        return {k: mask_params(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_params(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def secret_values(value: Any, key: str = "") -> set[str]:
    """Every secret in params as text: the values under secret keys and passwords inside URLs."""
    found: set[str] = set()
    if key and is_secret_key(key):
        _leaves(value, found)
        return found
    if isinstance(value, Mapping):
        for k, v in value.items():
            found |= secret_values(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= secret_values(v)
    elif isinstance(value, str):
        found |= set(passwords_in(value))
    return found


def _leaves(value: Any, found: set[str]) -> None:
    if isinstance(value, Mapping):
        for v in value.values():
            _leaves(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, found)
    elif value is not None and not isinstance(value, bool):
        found.add(str(value))


@dataclass(frozen=True)
class Secrets:
    """The secret values of one job's params, to scrub from text that may quote them."""

    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, *params: Any) -> Secrets:
        found: set[str] = set()
        for p in params:
            if p is not None:
                found |= secret_values(p)
        return cls(_longest_first(found))

    def scrub(self, text: str | None) -> str | None:
        """`text` with every secret value replaced by ***, then URL passwords masked."""
        if text is None:
            return None
        for secret in self.values:
            if len(secret) >= MIN_SCRUB:
                text = text.replace(secret, MASK)
        return mask_text(text)


def _longest_first(values: Iterable[str]) -> tuple[str, ...]:
    # A secret that contains another must be replaced first, or its remainder would show.
    return tuple(sorted(set(values), key=lambda s: (-len(s), s)))
