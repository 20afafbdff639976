"""Who may change things from the console: a shared token, and only the host names we serve.

Reads are open to whoever can reach the port (loopback by default). Writes (threshold, rollback)
need ``SD_CONSOLE_TOKEN`` in the ``X-Console-Token`` header; with no token configured the console
is read-only for everyone. The token travels in a header, never a cookie, so a page on another
site cannot make the browser send it (no CSRF). On loopback the ``Host`` header must name the
loopback too, so a DNS-rebinding page cannot read the API through the victim's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from pydantic import SecretStr

TOKEN_HEADER = "X-Console-Token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


def check_token(configured: SecretStr, presented: str | None) -> Verdict:
    """Constant-time comparison; an empty configured token refuses every write."""
    secret = configured.get_secret_value()
    if not secret:
        return Verdict(False, "the console is read-only: start it with SD_CONSOLE_TOKEN set to allow changes")
    if not presented:
        return Verdict(False, f"this change needs the console token (header {TOKEN_HEADER})")
    if not hmac.compare_digest(secret.encode(), presented.encode()):
        return Verdict(False, "wrong console token")
    return Verdict(True)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(bound_host: str, host_header: str | None) -> bool:
    """On a loopback bind, accept only loopback names in ``Host`` (anti DNS-rebinding)."""
    if not is_loopback(bound_host):
        return True
    if not host_header:
        return False
    name = host_header.strip()
    if name.startswith("["):  # [::1]:8050
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    return is_loopback(name.lower())
