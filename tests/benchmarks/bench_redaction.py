"""Each redaction pattern against 100 kB of adversarial input, before and after issue #15.

    .venv/bin/python tests/benchmarks/bench_redaction.py [--size 100000] [--before-size N] [--all]
        [--pattern REGEX ...]

Redaction runs in the audit writer's thread and holds the GIL: a pattern whose time grows
faster than its input stalls every request of the worker. Each pattern (the patterns as they
were before issue #15, then as they are now) is run with `re.sub` over each input below; the
script prints, per pattern, the slowest input and its time (`--all`: every input). The old
e-mail pattern is quadratic, so its column takes minutes at 100 kB: `--before-size 10000`
shortens it (the figures are then for that size). `--pattern` times a candidate for
TOLLGATE_AUDIT_REDACT_PATTERNS and says whether the gateway would accept it.

Last, the whole redactor as the writer applies it to one anonymous `GET /v1/models/aaa…a@`
(a 16,000-character model name): before, over the whole name; now, over the column (200
characters) plus the margin. Nothing here is asserted; it prints numbers.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from audit import redaction  # noqa: E402
from audit.storable import storable_text  # noqa: E402

# The patterns as they were before issue #15 (audit/redaction.py at commit 46afe29).
BEFORE: dict[str, str] = {
    "gateway key": r"tg-[A-Za-z0-9_\-]{10,}",
    "anthropic key": r"sk-ant-[A-Za-z0-9_\-]{10,}",
    "provider key": r"sk-[A-Za-z0-9_\-]{10,}",
    "gemini key": r"AIza[0-9A-Za-z_\-]{30,}",
    "bearer": r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}",
    "key=value": r"(?i)\b(x-api-key|x-app-key|api[_-]?key|authorization)(\"?\s*[:=]\s*\"?)[^\s\"',}]{8,}",
    "e-mail": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}",
    "card": r"(?<![\d.])(?:\d[ \-]?){12,18}\d(?![\d.])",
}
AFTER: dict[str, str] = dict(zip(BEFORE, redaction.BUILTIN_PATTERNS, strict=True))


def inputs(size: int) -> dict[str, str]:
    """Inputs chosen to make a backtracking pattern scan far from many start positions."""
    half = size // 2
    return {
        "a*n + @": "a" * size + "@",
        "digits": "1" * size,
        "a@ * n": "a@" * half,
        "a@ + dotted domain": "a@" + "a." * half,
        "64 a + @, repeated": ("a" * 64 + "@") * (size // 65),
        "1- * n": "1-" * half,
        "1 (space) * n": "1 " * half,
        "tg- * n": "tg-" * (size // 3),
        "sk- * n": "sk-" * (size // 3),
        "bearer + spaces": "bearer" + " " * size,
        "api_key + spaces": "api_key" + " " * size + "x",
        "api_key= * n": "api_key=\"" * (size // 9),
    }


def timed(fn: Callable[[], object]) -> float:
    """The best of three runs (the machine is shared), or of one if it took over a second."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
        if best > 1.0:
            break
    return best


def measure(patterns: dict[str, str], texts: dict[str, str]) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, pattern in patterns.items():
        compiled = re.compile(pattern)
        results[name] = {label: timed(lambda c=compiled, t=text: c.sub("X", t)) for label, text in texts.items()}
        worst = max(results[name], key=results[name].get)  # type: ignore[arg-type]
        print(f"  {name:14} worst {results[name][worst] * 1000:10.1f} ms  ({worst})", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--before-size", type=int, default=None, help="input size for the old patterns")
    parser.add_argument("--all", action="store_true", help="print every input's time, not just the worst")
    parser.add_argument("--pattern", action="append", default=[], help="a candidate configured pattern")
    args = parser.parse_args()
    before_size = args.before_size or args.size

    print(f"before issue #15, {before_size:,} characters per input:")
    before = measure(BEFORE, inputs(before_size))
    print(f"now, {args.size:,} characters per input:")
    after = measure(AFTER, inputs(args.size))
    if args.all:
        print(f"\n{'pattern':14} {'input':22} {'before ms':>12} {'now ms':>10}")
        for name in BEFORE:
            for label in after[name]:
                print(f"{name:14} {label:22} {before[name][label] * 1000:12.2f} {after[name][label] * 1000:10.2f}")

    for pattern in args.pattern:
        problem = redaction.pattern_problem(pattern)
        print(f"\nconfigured {pattern!r}: {'refused: ' + problem if problem else 'accepted'}")
        if not problem:
            measure({pattern: pattern}, inputs(args.size))

    route = "a" * 16_000 + "@"
    everything = [re.compile(p) for p in BEFORE.values()]
    old = timed(lambda: [p.sub("X", route) for p in everything])
    current = redaction.Redactor(emails=True, cards=True, extra=())
    new = timed(lambda: storable_text(route, max_length=200, margin=256, redact=current))
    print(f"\nthe writer's redaction of a 16,000-character model name: before {old * 1000:.1f} ms, "
          f"now {new * 1000:.3f} ms")


if __name__ == "__main__":
    main()
