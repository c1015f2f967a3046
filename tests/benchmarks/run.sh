#!/usr/bin/env bash
# The benchmark's one command: bash tests/benchmarks/run.sh [--seconds N] [--skip-slow]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]"; }
# 5,000 streams need 5,000 descriptors in the client, the sandbox and each gateway worker (its clients'
# and the provider's connections): raise the soft limit as far as the hard one allows (a failed `ulimit -n 65536` changes nothing).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec .venv/bin/python tests/benchmarks/bench_gateway.py "$@"
