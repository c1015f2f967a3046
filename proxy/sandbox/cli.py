"""The sandbox provider's command line, shared by `python -m proxy.sandbox` and `manage.py sandbox_provider`.

One definition of the options keeps the two entry points identical; this module imports no Django,
so the sandbox can run where the gateway's dependencies are not set up.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.sandbox.config import USAGE_KNOBS, SandboxConfig
from proxy.sandbox.server import make_app


def add_arguments(parser: Any) -> None:
    """The command-line options of the sandbox, on an argparse parser."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before the response headers")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="delay between stream events")
    parser.add_argument("--chunks", type=int, default=8, help="content events per stream")
    parser.add_argument("--fail-status", type=int, default=None, help="answer with this status (e.g. 429, 529)")
    parser.add_argument("--fail-count", type=int, default=0, help="fail only the next N requests (0: all)")
    parser.add_argument("--fail-every", type=int, default=0, help="fail one request in N, indefinitely")
    parser.add_argument("--disconnect-after", type=int, default=None, help="drop streams after N events")
    parser.add_argument("--hang-ms", type=int, default=0, help="sleep before answering")
    parser.add_argument("--require-key", default=None, help="accept only this API key")
    parser.add_argument("--cache-read-tokens", type=int, default=0, help="report N prompt tokens read from cache")
    parser.add_argument("--cache-read-percent", type=int, default=0, help="... or this percentage of the prompt")
    parser.add_argument("--cache-write-tokens", type=int, default=0, help="report N prompt tokens written to cache")
    parser.add_argument("--cache-write-percent", type=int, default=0, help="... or this percentage of the prompt")
    parser.add_argument("--reasoning-tokens", type=int, default=0, help="report N hidden reasoning tokens")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])


def config_from_options(options: Mapping[str, Any]) -> SandboxConfig:
    """A validated SandboxConfig from parsed options; raises ValueError."""
    config = SandboxConfig(latency_ms=options["latency_ms"], chunk_delay_ms=options["chunk_delay_ms"],
                           chunks=options["chunks"], fail_status=options["fail_status"],
                           fail_count=options["fail_count"], fail_every=options.get("fail_every", 0),
                           disconnect_after=options["disconnect_after"],
                           hang_ms=options["hang_ms"], require_key=options["require_key"] or None,
                           **{name: options.get(name, 0) for name in USAGE_KNOBS})
    config.validate()
    return config


def serve(config: SandboxConfig, *, host: str, port: int, log_level: str = "warning") -> None:
    import uvicorn

    # backlog: the benchmark opens thousands of streams at once; the default (2048) would drop some.
    uvicorn.run(make_app(config), host=host, port=port, log_level=log_level, loop="auto", http="auto",
                access_log=False, backlog=8192)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m proxy.sandbox", description=__doc__.splitlines()[0])
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    try:
        config = config_from_options(options)
    except ValueError as exc:
        parser.error(str(exc))
    serve(config, host=options["host"], port=options["port"], log_level=options["log_level"])
