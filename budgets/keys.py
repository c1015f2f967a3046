"""Gateway key format: `tg-` followed by 43 URL-safe characters (256 random bits)."""
from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "tg-"
VISIBLE_PREFIX_LENGTH = 10  # "tg-" and 7 random characters: enough to tell keys apart


def key_generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def key_visible_prefix(raw_key: str) -> str:
    return raw_key[:VISIBLE_PREFIX_LENGTH]
