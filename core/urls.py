"""Endpoint URLs: where a secret may be sent, and their redaction before anything is written or printed.

One rule for every file and line the toolchain writes: a URL's credentials (``user:password@`` and query parameters
that carry keys or tokens) are replaced by :data:`REDACTED`. And one rule for sending: an API key (or credentials in
the URL) goes only over ``https://`` or to this machine's loopback (127.0.0.0/8, ::1, ``localhost``).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"

#: query parameter names whose values are secrets (compared lower-case, ``-`` read as ``_``)
SECRET_PARAMS = frozenset({
    "key", "api_key", "apikey", "token", "access_token", "auth", "auth_token", "id_token", "refresh_token",
    "secret", "client_secret", "password", "passwd", "pwd", "sig", "signature", "x_amz_signature",
    "x_amz_credential", "x_amz_security_token",
})

_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]")


def _secret_param(name: str) -> bool:
    return name.lower().replace("-", "_") in SECRET_PARAMS


def _host_part(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def has_credentials(url: str) -> bool:
    """True when ``url`` carries ``user[:password]@`` or a secret query parameter."""
    parts = urlsplit(url)
    return "@" in parts.netloc or any(_secret_param(k) for k, _ in parse_qsl(parts.query, keep_blank_values=True))


def redact_url(url: str) -> str:
    """``url`` with its user-info and secret query values replaced by :data:`REDACTED` (anything else unchanged)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # unparseable: keep nothing of it
    netloc = f"{REDACTED}@{_host_part(parts.netloc)}" if "@" in parts.netloc else parts.netloc
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret_param(k) for k, _ in pairs):
        query = urlencode([(k, REDACTED if _secret_param(k) else v) for k, v in pairs], safe=REDACTED)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside free text (an error message, a log line) redacted as by :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def is_redacted(url: str) -> bool:
    """True when ``url`` holds a credential that :func:`redact_url` replaced (it can no longer be used)."""
    parts = urlsplit(url)
    return ("@" in parts.netloc and parts.netloc.partition("@")[0] == REDACTED) or any(
        _secret_param(k) and v == REDACTED for k, v in parse_qsl(parts.query, keep_blank_values=True))


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_may_go_to(url: str) -> bool:
    """True when a secret may be sent to ``url``: ``https://``, or any scheme to a loopback host."""
    return urlsplit(url).scheme.lower() == "https" or is_loopback(url)
