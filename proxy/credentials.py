"""Provider credentials: where they may come from, who may choose that, and reading them (DESIGN §6).

A provider names its credential, never holds it. The name is confined: an environment variable
with the TOLLGATE_PROVIDER_ prefix, or a file inside TOLLGATE_SECRETS_DIR after following every
symlink. Otherwise whoever may edit a provider could name DATABASE_URL or DJANGO_SECRET_KEY, point
base_url at a server of theirs, and the next call or health check would send that secret there as
the bearer token. The rules are checked when a reference is saved (model validation: the admin,
the admin API, gateway_apply) and again whenever one is read, for rows written before the rules
or around them (a queryset update, a restored dump).

Choosing the reference, or base_url (where the credential is sent), is itself guarded: superusers
and holders of proxy.change_provider_credentials only (docs/providers.md#credentials). Each such
change is logged on "tollgate.security" and, when a user made it, written to the admin's history
(a Django LogEntry: the audit app has no service for non-request events).
"""
from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.exceptions import ValidationError

logger = logging.getLogger("tollgate.security")

ENV_PREFIX = "TOLLGATE_PROVIDER_"
DOCS = "docs/providers.md#credentials"
# The fields that decide which secret is read and where it is sent.
CREDENTIAL_FIELDS = ("base_url", "api_key_env", "api_key_file")
PERMISSION_CODENAME = "change_provider_credentials"
PERMISSION = f"proxy.{PERMISSION_CODENAME}"
PERMISSION_REFUSED = (
    "Creating a provider, or changing its base_url, api_key_env or api_key_file, needs a superuser or the "
    f"'Can change provider credentials' permission ({PERMISSION}, the gateway-credentials group): these "
    f"decide which secret the gateway reads and where it sends it. See {DOCS}."
)
_MAX_SECRET_BYTES = 64 * 1024  # a provider key is short; anything bigger is the wrong file


# --- The rules -----------------------------------------------------------------------------------


def env_problem(name: str) -> str | None:
    """Why `name` may not be a provider's api_key_env, or None."""
    if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
        return None
    if name == ENV_PREFIX:
        return f"api_key_env must name a variable after the {ENV_PREFIX} prefix; see {DOCS}"
    return f"api_key_env must start with {ENV_PREFIX} (rename {name} to {ENV_PREFIX}{name}); see {DOCS}"


def secrets_dir() -> Path:
    return Path(settings.TOLLGATE_SECRETS_DIR)


def _real_paths(reference: str) -> tuple[Path, Path]:
    """(the secrets directory, the file) with every symlink followed; a relative name is in the directory."""
    root = secrets_dir()
    path = Path(reference)
    if not path.is_absolute():
        path = root / path
    return Path(os.path.realpath(root)), Path(os.path.realpath(path))


def file_problem(reference: str) -> str | None:
    """Why `reference` may not be a provider's api_key_file, or None. The file need not exist yet."""
    if "\x00" in reference:
        return "api_key_file must not contain NUL characters"
    root, real = _real_paths(reference)
    if real != root and real.is_relative_to(root):
        return None
    return (f"api_key_file must be a file inside TOLLGATE_SECRETS_DIR ({secrets_dir()}), also after following "
            f"symlinks, and {reference!r} is not: move the file there and name it relative to that "
            f"directory; see {DOCS}")


def validate_env_reference(value: str) -> None:
    problem = env_problem(value) if value else None
    if problem:
        raise ValidationError(problem, code="credential_env")


def validate_file_reference(value: str) -> None:
    problem = file_problem(value) if value else None
    if problem:
        raise ValidationError(problem, code="credential_file")


# --- Reading ---------------------------------------------------------------------------------------


def _refused(provider: str, problem: str) -> str:
    # Every read of a bad reference says so: the provider gets no credential until it is fixed.
    logger.error("provider %s: credential reference refused, no credential sent: %s", provider, problem,
                 extra={"provider": provider})
    return ""


def credential_read(*, provider: str, env: str, file: str) -> str:
    """The credential named by `env` or `file` ('' when none is named, or the reference breaks the rules)."""
    if env:
        problem = env_problem(env)
        return _refused(provider, problem) if problem else os.environ.get(env, "")
    if not file:
        return ""
    problem = file_problem(file)
    if problem:
        return _refused(provider, problem)
    _, real = _real_paths(file)
    try:
        # The checked real path, opened without following a symlink put there since the check.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            return handle.read(_MAX_SECRET_BYTES).decode("utf-8", errors="replace").strip()
    except OSError as exc:
        logging.getLogger(__name__).warning("provider %s: cannot read its api_key_file: %s", provider,
                                            exc.strerror or exc.__class__.__name__, extra={"provider": provider})
        return ""


# --- Who may change them, and the record of each change --------------------------------------------


def credentials_may_change(user: Any) -> bool:
    """Superusers and holders of proxy.change_provider_credentials (has_perm covers active superusers)."""
    return bool(user is not None and getattr(user, "is_active", False) and user.has_perm(PERMISSION))


def credential_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{field: (old, new)} of the credential fields that differ; every set field for a new provider."""
    old = before or {}
    changes = {}
    for field in CREDENTIAL_FIELDS:
        was, now = str(old.get(field) or ""), str(after.get(field) or "")
        if was != now:
            changes[field] = (was, now)
    return changes


def _shown(field: str, value: str) -> str:
    if not value:
        return "(none)"
    if field == "base_url":
        # A URL may carry user:password; the record names where, not with what.
        parts = urlsplit(value)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
            value = urlunsplit(parts._replace(netloc=netloc))
    return repr(value)


def credential_change_record(*, provider: Any, changes: Mapping[str, tuple[str, str]], created: bool, via: str,
                             user: Any = None) -> None:
    """Log a change of a provider's credential reference or base_url, and add it, with the old and new
    values, to the provider's admin history (beside the admin's own "Changed ..." entry).

    `via` says where it came from (admin, admin API, gateway_apply). Without a user (gateway_apply)
    the log line, which names the operating-system account, is the record.
    """
    if not changes:
        return
    text = "; ".join(f"{field} {_shown(field, old)} → {_shown(field, new)}" for field, (old, new) in changes.items())
    who = getattr(user, "username", None) or f"os:{_os_user()}"
    action = "set on a new provider" if created else "changed"
    logger.warning("provider %s: credential reference %s by %s via %s: %s", provider.name, action, who, via, text,
                   extra={"provider": provider.name})
    if user is not None and getattr(user, "pk", None) is not None:
        LogEntry.objects.log_actions(
            user_id=user.pk, queryset=[provider], action_flag=ADDITION if created else CHANGE,
            change_message=f"Credential reference {action} via {via}: {text}.", single_object=True,
        )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container without /etc/passwd entry
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"
