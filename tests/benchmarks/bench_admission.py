"""The cost of admission (reserve + settle) per request, in one worker process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/1 \\
        .venv/bin/python tests/benchmarks/bench_admission.py [--requests 3000] [--concurrency 64]

Creates a scratch database (test_tollgate_<pid>, dropped afterwards) and a Redis key
prefix of its own, gives one consumer the full set of limits (a tokens, a requests and
a cost budget, requests and tokens per minute), and a member of a team the same plus the
team's tokens budget (held in the same script) and a budget scoped to another route
(filtered out in memory), and runs proxy.admission's `admit` and
`settle` the way the request path does: one request at a time (latency) and with
`--concurrency` requests in flight (throughput of one event loop). It prints
microseconds per request, and the same for a consumer without limits as a baseline.
Without REDIS_URL it measures the database counters instead.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("TOLLGATE_LOG_LEVEL", "warning")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(samples: list[float]) -> dict[str, float]:
    return {"mean_us": statistics.fmean(samples) * 1e6, "p50_us": _percentile(samples, 0.5) * 1e6,
            "p99_us": _percentile(samples, 0.99) * 1e6}


def _seed():
    from budgets.keys import key_issue
    from budgets.models import Budget, Consumer, ModelPrice, RateLimit, Team
    from proxy.models import Deployment, ModelRoute, Provider

    provider = Provider.objects.create(name="bench", kind="sandbox", base_url="http://127.0.0.1:9/v1")
    route = ModelRoute.objects.create(model="bench", default_max_tokens=256)
    Deployment.objects.create(route=route, provider=provider, upstream_model="gpt-4o-mini")
    ModelPrice.objects.get_or_create(model="gpt-4o-mini", defaults={"input_per_million": 150_000,
                                                                    "output_per_million": 600_000})
    huge = 10**15
    team = Team.objects.create(name="bench-team")
    Budget.objects.create(team=team, metric="tokens", limit=huge, period="day")
    keys = []
    for name, in_team in (("bench-limited", None), ("bench-member", team)):
        limited = Consumer.objects.create(name=name, team=in_team)
        for metric, period in (("tokens", "day"), ("requests", "day"), ("cost_usd", "month")):
            Budget.objects.create(consumer=limited, metric=metric, limit=huge, period=period)
        RateLimit.objects.create(consumer=limited, requests=10**9, window_seconds=60)
        RateLimit.objects.create(consumer=limited, tokens=2 * 10**9, window_seconds=60)
        if in_team is not None:
            Budget.objects.create(consumer=limited, metric="tokens", limit=huge, routes=["other-route"])
        keys.append(key_issue(consumer=limited).plaintext)
    free = Consumer.objects.create(name="bench-free")
    return keys[0], keys[1], key_issue(consumer=free).plaintext


async def _one(key_info, route, deployment, body) -> tuple[float, float]:
    from proxy.admission import admit, price_usage, settle_start
    from proxy.context import RequestContext
    from proxy.errors import Caller

    ctx = RequestContext(caller=Caller.OPENAI, endpoint="chat.completions")
    ctx.key, ctx.route = key_info, route
    started = time.perf_counter()
    await admit(ctx, body)
    admitted = time.perf_counter()
    ctx.deployment, ctx.attempts = deployment, 1
    ctx.prompt_tokens, ctx.completion_tokens = 12, 40
    await price_usage(ctx)
    await settle_start(ctx)
    return admitted - started, time.perf_counter() - admitted


async def _measure(raw_key: str, requests: int, concurrency: int) -> dict:
    from budgets.keys import key_digest
    from budgets.selectors import key_info_by_digest
    from gateway_site.lib.db import run_db
    from proxy.routing import route_table

    key_info = await run_db(key_info_by_digest, key_digest(raw_key))
    route = (await route_table())["bench"]
    deployment = route.deployments[0]
    body = {"model": "bench", "messages": [{"role": "user", "content": "hello " * 20}], "max_tokens": 200}
    for _ in range(50):  # warm caches, connections and scripts
        await _one(key_info, route, deployment, body)
    admit_s, settle_s, total_s = [], [], []
    for _ in range(requests):
        a, s = await _one(key_info, route, deployment, body)
        admit_s.append(a)
        settle_s.append(s)
        total_s.append(a + s)
    semaphore = asyncio.Semaphore(concurrency)

    async def limited() -> None:
        async with semaphore:
            await _one(key_info, route, deployment, body)

    started = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(requests)))
    wall = time.perf_counter() - started
    return {"admit": _summary(admit_s), "settle": _summary(settle_s), "admit+settle": _summary(total_s),
            f"throughput_at_{concurrency}_per_s": requests / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    creation = connection.creation
    test_name = creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        limited_key, member_key, free_key = _seed()
        results = {
            "database": connection.vendor,
            "counters": "redis" if settings.REDIS_URL else "database",
            "limits: 3 budgets + 2 rate limits": asyncio.run(_measure(limited_key, args.requests, args.concurrency)),
            "team member: same + team + route": asyncio.run(_measure(member_key, args.requests, args.concurrency)),
            "no limits (baseline)": asyncio.run(_measure(free_key, args.requests, args.concurrency)),
        }
    finally:
        from budgets.usage import usage_mirror

        usage_mirror.flush()
        time.sleep(settings.TOLLGATE_BUDGET_MIRROR_SECONDS + 0.2)  # let the mirror thread let go
        if settings.REDIS_URL:
            from tests.conftest import clear_shared_cache

            clear_shared_cache()
        creation.destroy_test_db(test_name, verbosity=0)
    print(f"admission cost per request ({results['database']}, counters in {results['counters']}), "
          f"{args.requests} requests")
    print(f"{'case':36} {'stage':14} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9}")
    for case, data in results.items():
        if not isinstance(data, dict):
            continue
        for stage in ("admit", "settle", "admit+settle"):
            row = data[stage]
            print(f"{case:36} {stage:14} {row['mean_us']:9.0f} {row['p50_us']:9.0f} {row['p99_us']:9.0f}")
        rate_key = next(k for k in data if k.startswith("throughput"))
        print(f"{case:36} {rate_key}: {data[rate_key]:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
