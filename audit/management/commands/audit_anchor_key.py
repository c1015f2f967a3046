"""The anchor signing key: print its public half for auditors, or generate a new one."""
from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.anchors import private_key, private_key_new, public_pem


class Command(BaseCommand):
    help = "Print the public key of TOLLGATE_AUDIT_ANCHOR_KEY_FILE (--public), or write a new private key."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--public", action="store_true", help="Print the public key (PEM) auditors verify with.")
        parser.add_argument("--generate", metavar="FILE", help="Write a new Ed25519 private key (mode 0600).")

    def handle(self, *args, public: bool = False, generate: str | None = None, **options) -> None:
        if generate:
            try:
                fd = os.open(Path(generate), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise CommandError(f"{generate} exists; a signing key is never overwritten") from None
            with os.fdopen(fd, "wb") as out:
                out.write(private_key_new())
            self.stdout.write(f"Wrote {generate}; set TOLLGATE_AUDIT_ANCHOR_KEY_FILE={generate}.")
            return
        if not public:
            raise CommandError("Give --public or --generate FILE.")
        try:
            key = private_key()
        except (OSError, ValueError) as exc:
            raise CommandError(f"TOLLGATE_AUDIT_ANCHOR_KEY_FILE cannot be read: {exc}") from None
        if key is None:
            raise CommandError("TOLLGATE_AUDIT_ANCHOR_KEY_FILE is not set: anchors are not signed.")
        self.stdout.write(public_pem(key).decode(), ending="")
