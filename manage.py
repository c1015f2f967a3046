#!/usr/bin/env python
"""Django's command-line utility for Tollgate."""
import os
import sys


def _quickstart_chain_key() -> None:
    """Give the quickstart a real audit chain key, made on first start and kept in var/,
    so its audit log verifies with the same key on every later start."""
    if os.environ.get("TOLLGATE_AUDIT_CHAIN_KEY") or os.environ.get("TOLLGATE_AUDIT_CHAIN_KEY_FILE"):
        return
    import secrets
    from pathlib import Path

    path = Path(__file__).resolve().parent / "var" / "audit-chain.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    os.environ["TOLLGATE_AUDIT_CHAIN_KEY_FILE"] = str(path)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
    if sys.argv[1:2] == ["quickstart"]:
        # The quickstart is a trial on a laptop: debug mode spares the user a
        # secret key. Production sets DJANGO_SECRET_KEY and leaves DEBUG off.
        os.environ.setdefault("DJANGO_DEBUG", "1")
        _quickstart_chain_key()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
