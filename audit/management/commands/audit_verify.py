"""Check the audit log's hash chain, its head and the newest anchor: exit 0, or 2 at the first break.

With --anchors DIR --public-key FILE it checks only the anchors, offline (no database):
that they are genuine and continuous. Checking the rows needs the database and the chain key.
"""
from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.anchors import (
    anchors_check,
    anchors_in,
    anchors_stored,
    chain_against_anchor,
    private_key,
    public_key_load,
)
from audit.chain import chain_verify
from audit.exports import parse_moment


class Command(BaseCommand):
    help = "Verify the audit log's hash chain, its head and anchors; report the first break."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", help="Start at the first event at or after this ISO date or datetime.")
        parser.add_argument("--anchors", metavar="DIR", help="Also read anchor-<N>.json files from this directory.")
        parser.add_argument("--public-key", metavar="FILE", help="The anchors' Ed25519 public key (PEM). "
                            "With --anchors: check the anchors only, offline, without the database.")

    def handle(self, *args, since: str | None = None, anchors: str | None = None,
               public_key: str | None = None, **options) -> None:
        try:
            start = parse_moment(since) if since else None
            key = public_key_load(public_key) if public_key else None
            if key is None and settings.TOLLGATE_AUDIT_ANCHOR_KEY_FILE:
                signing = private_key()
                key = signing.public_key() if signing else None
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None
        offline = bool(anchors and public_key)
        found = anchors_in(anchors) if anchors else []
        if not offline:
            found = anchors_stored() + found
            if settings.TOLLGATE_AUDIT_EXPORT_DIR:
                found += anchors_in(settings.TOLLGATE_AUDIT_EXPORT_DIR)
        report = anchors_check(found, public_key=key)
        for warning in report.warnings:
            self.stderr.write(f"Warning: {warning}.")
        if report.problems:
            raise CommandError("Audit anchors broken: " + "; ".join(report.problems) + ".", returncode=2)
        newest = f"anchor {report.newest.number}" if report.newest else "no anchor"
        if offline:
            self.stdout.write(f"Audit anchors intact: {len({a.number for a in found})} anchors verified offline "
                              f"(up to {newest}); the rows need the database and the chain key.")
            return
        chain = chain_verify(since=start)
        if not chain.ok:
            where = f" (request {chain.request_id})" if chain.request_id else ""
            raise CommandError(
                f"Audit chain broken at event {chain.broken_seq}{where} in lane {chain.lane}: {chain.problem}. "
                f"{chain.checked} events before it verified.",
                returncode=2,
            )
        problems = chain_against_anchor(report.newest) if report.newest else []
        if problems:
            raise CommandError(f"Audit chain broken against {newest}: " + "; ".join(problems) + ".", returncode=2)
        self.stdout.write(f"Audit chain intact: {chain.checked} events verified (against {newest}) in "
                          f"{chain.lanes} lane{'s' if chain.lanes != 1 else ''}.")
