"""Credential redaction for anything the daemon shows others: retained config, logs, stats, errors, CLI output."""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ — the userinfo runs to the LAST '@' before whitespace or a quote, so a password holding an
# unescaped '@' or '/' is masked whole (over-masking a path with '@' in it is the safe mistake)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s\"']*)@")
# GStreamer element properties and URL query parameters that carry a secret: user-pw=..., proxy-pw=...,
# ?password=..., &pwd=..., token=...
_SECRET_PARAM = re.compile(
    r"(?P<key>\b(?:user-pw|proxy-pw|password|passwd|pwd|pass|token|api[_-]?key|secret)\s*=\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;!\"']+)", re.IGNORECASE)


def _mask_userinfo(match: re.Match) -> str:
    userinfo = match.group("userinfo")
    user, sep, _ = userinfo.partition(":")
    # user:password keeps the user name (useful to operators); a lone userinfo is often a token: mask it all
    return f"{match.group('scheme')}{user}:{MASK}@" if sep else f"{match.group('scheme')}{MASK}@"


def _mask_param(match: re.Match) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """`text` with URL userinfo passwords and secret-carrying parameters masked; everything else unchanged."""
    if not isinstance(text, str) or not text:
        return text
    return _SECRET_PARAM.sub(_mask_param, _USERINFO.sub(_mask_userinfo, text))


def redact_data(data):
    """A copy of plain data (dicts, lists, strings) with every string passed through `redact`."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(value) for value in data]
    return data
