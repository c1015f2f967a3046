"""Export audit events of a date range as CSV or JSONL to a file (streamed, constant memory)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.exports import FORMATS, export_chunks, parse_moment
from audit.selectors import events_in_range


class Command(BaseCommand):
    help = "Export audit events with since <= time < until (a date as --until includes that day)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", required=True, help="ISO date or datetime (UTC if no offset).")
        parser.add_argument("--until", required=True, help="ISO date (inclusive) or datetime (exclusive).")
        parser.add_argument("--consumer", help="Only this consumer's events (by name).")
        parser.add_argument("--format", choices=FORMATS, default="jsonl")
        parser.add_argument("--output", required=True, help="File to write ('-' for standard output).")

    def handle(self, *args, **options) -> None:
        try:
            since = parse_moment(options["since"])
            until = parse_moment(options["until"], end=True)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if until <= since:
            raise CommandError("--until must be after --since")
        events = events_in_range(since=since, until=until, consumer=options.get("consumer"))
        output = options["output"]
        progress = sys.stderr.isatty() and output != "-"
        total = events.count() if progress else None
        started = time.monotonic()
        stats: dict = {"rows": 0}
        if output == "-":
            out = sys.stdout.buffer
            for chunk in export_chunks(events, options["format"], stats=stats):
                out.write(chunk)
            out.flush()
            return
        path = Path(output)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as out:
            for chunk in export_chunks(events, options["format"], stats=stats):
                out.write(chunk)
                if progress:
                    self._progress(stats["rows"], total, started)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
        rows = stats["rows"]
        elapsed = time.monotonic() - started
        if progress:
            sys.stderr.write("\n")
        rate = rows / elapsed if elapsed > 0 else float(rows)
        self.stdout.write(f"Exported {rows} events to {path} in {elapsed:.1f}s ({rate:,.0f} rows/s).")

    @staticmethod
    def _progress(done: int, total: int | None, started: float) -> None:
        width = 30
        fraction = min(1.0, done / total) if total else 1.0
        bar = "#" * int(fraction * width)
        sys.stderr.write(f"\r[{bar:<{width}}] {min(done, total or done):,}/{total or 0:,} rows "
                         f"{time.monotonic() - started:5.1f}s")
        sys.stderr.flush()

