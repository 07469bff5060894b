"""Write keys: which key a request carries and which source (input topic) it stands for."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping


def basic_user(header: str | None) -> str | None:
    """The user part of an HTTP Basic `Authorization` header (Segment puts the write key there).

    Returns None when there is no Basic header; "" when it is malformed (which then fails auth).
    """
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]


def source_for(write_keys: Mapping[str, str], key: str | None) -> str | None:
    """The source of a write key, or None if the key is unknown.

    Compares every configured key in constant time, so response timing does not reveal how
    much of a guessed key was right.
    """
    if not key:
        return None
    found: str | None = None
    for known, source in write_keys.items():
        if hmac.compare_digest(known.encode(), key.encode()):
            found = source
    return found
