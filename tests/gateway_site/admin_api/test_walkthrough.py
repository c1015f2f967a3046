"""docs/walkthrough.md works as written: its bash blocks, run in order in one shell, against real servers."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.servers import ROOT, free_port, server_env

WALKTHROUGH = ROOT / "docs" / "walkthrough.md"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="the walkthrough uses curl and jq"),
]


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", markdown, flags=re.S | re.M)


def test_the_walkthrough_runs_as_written(tmp_path):
    blocks = bash_blocks(WALKTHROUGH.read_text())
    assert len(blocks) == 9
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(blocks)
    env = server_env(
        GATEWAY_PORT=str(free_port()), OPENAI_LIKE_PORT=str(free_port()), ANTHROPIC_LIKE_PORT=str(free_port()),
        # Its own database and cache prefix: never this test run's, never the developer's.
        DATABASE_URL=f"sqlite:///{tmp_path / 'walkthrough.sqlite3'}",
        TOLLGATE_CACHE_PREFIX=f"tgwalk{os.getpid()}", TOLLGATE_CELERY_QUEUE=f"tgwalk{os.getpid()}",
    )
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    output = result.stdout
    assert result.returncode == 0, f"{output[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    assert '{"id":1,"name":"openai-like","kind":"openai_compatible"}' in output.replace(" ", "")
    assert '"usage":' in output
    before, _, after = output.partition("openai-like stopped")
    assert "served by anthropic-like\nserved by openai-like" in before  # pinned, each to its own
    assert '"metric":"requests","period":"day","used":3,"limit":1000,"remaining":997' in before
    assert before.count('"status":200') >= 3  # the audit events of those requests
    assert "request_id" in before.split("\n", 1)[1]  # the CSV export's header
    assert '{"action":"addition","model":"budget","object_repr":' in before  # the admin history, newest first
    assert after.count("served by anthropic-like") == 5
