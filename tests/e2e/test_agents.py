"""The three coding agents, headless, through the real gateway to an upstream of each wire format.

Claude Code, Codex CLI and Gemini CLI run as /work/shared/agents.md says (their own empty HOME,
stdin closed, bounded by a timeout), each with its default model, so that they send what their
users send. Routes named after those default models (docs/agents.md) are switched, test by test,
to an OpenAI, an Anthropic or a Gemini provider, all served by the sandbox. Each test checks that
the agent printed the sandbox's answer and that the sandbox saw the calls in that upstream's
format. The agents are installed by .ci/run; without them the tests skip, or fail under CI=true.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from proxy.sandbox import parse_request, plan_reply
from tests.e2e.conftest import seed_providers, seeded_gateway
from tests.fixtures.capture_agent_requests import require_agent, run_claude, run_codex, run_gemini

# django_db: the test database is set up for this module even when it runs alone; the tests
# write nothing (the routes are switched by the module-scoped `upstream` fixture).
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

AGENT_TIMEOUT = 90  # seconds per agent run; one takes 1 to 10 s

# What each agent asks for when nobody names a model: its main model first, then its helpers'
# (Claude Code's small/fast model, Gemini CLI's router). docs/agents.md lists them.
DEFAULT_MODELS = {
    # Its small/fast model is claude-haiku-4-5, sent under its first-party id (dated).
    "claude": ["claude-opus-4-8", "claude-haiku-4-5-20251001", "claude-haiku-4-5"],
    "codex": ["gpt-6.1-sol"],
    "gemini": ["gemini-3.8-flash", "gemini-3.5-flash-lite"],
}
OLDER_CLAUDE = "claude-sonnet-4-5"  # Claude Code sends a plainer request for it (agents.md)
ROUTES = [model for models in DEFAULT_MODELS.values() for model in models] + [OLDER_CLAUDE]

# A route keeps its own name on a provider of its family (claude-opus-4-8 on Anthropic); on another
# family it is served by that family's model, so the translation sees a real model name.
FAMILIES = {"claude": "anthropic", "gpt": "openai", "gemini": "gemini"}
CROSS_MODELS = {"openai": "gpt-5.1", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}


def upstream_model(route: str, upstream: str) -> str:
    return route if FAMILIES[route.split("-")[0]] == upstream else CROSS_MODELS[upstream]


def streamed_format(agent: str, upstream: str) -> str:
    """The request log's name of the agent's streamed turn as this upstream receives it."""
    if upstream == "openai":
        # A Responses caller goes to OpenAI's own /v1/responses; the others to Chat Completions.
        return "openai.responses" if agent == "codex" else "openai.chat"
    return {"anthropic": "anthropic.messages", "gemini": "gemini.streamGenerateContent"}[upstream]


def seed_agents(sandbox_port: int) -> SimpleNamespace:
    """The providers of every kind (seed_providers), and the agents' routes, on Anthropic until switched."""
    from proxy.models import Deployment, ModelRoute, Provider

    seeded = seed_providers(sandbox_port)
    anthropic = Provider.objects.get(name="e2e-anthropic")
    for model in ROUTES:
        route = ModelRoute.objects.create(model=model)
        Deployment.objects.create(route=route, provider=anthropic, upstream_model=upstream_model(model, "anthropic"))
    return seeded


@pytest.fixture(scope="module")
def agents_gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    """One gateway and sandbox for the module, on the module's own database."""
    # Tests switch the routes' provider: with no route cache, every worker reads the switch at its
    # next request. (The tests' autouse fixture empties the shared cache, generation counters
    # included, so an invalidation cannot be relied on to reach the workers here.)
    with seeded_gateway(server_database, django_db_blocker, seed_agents, TOLLGATE_ROUTE_CACHE_SECONDS="0") as running:
        yield running


@pytest.fixture(scope="module")
def upstream(request, agents_gateway, django_db_blocker) -> str:
    """The upstream under test, openai, anthropic or gemini (parametrized indirectly): every agent
    route is switched to it. Module-scoped, so the switch is committed outside the tests'
    transactions, where the gateway's workers see it."""
    from proxy.models import Deployment, Provider

    with django_db_blocker.unblock():
        provider = Provider.objects.get(name=f"e2e-{request.param}")
        for deployment in Deployment.objects.filter(route__model__in=ROUTES).select_related("route"):
            deployment.provider = provider
            deployment.upstream_model = upstream_model(deployment.route.model, request.param)
            deployment.save()  # its signal drops every worker's route table
    return request.param


@pytest.fixture
def sandbox_log(agents_gateway) -> Callable[[], list[dict[str, Any]]]:
    """Every call the sandbox saw during the test, oldest first."""
    httpx.post(f"{agents_gateway.sandbox_url}/_sandbox/reset").raise_for_status()

    def read() -> list[dict[str, Any]]:
        seen = httpx.get(f"{agents_gateway.sandbox_url}/_sandbox/requests", params={"limit": 200}).json()["requests"]
        return seen[::-1]

    return read


def run_agent(agent: str, gateway: SimpleNamespace, *args: str) -> Any:
    require_agent(agent)
    with tempfile.TemporaryDirectory(prefix=f"tollgate-{agent}-") as home:
        if agent == "claude":
            return run_claude(gateway.url, home, *args, key=gateway.key, timeout=AGENT_TIMEOUT)
        if agent == "codex":
            # No model line: Codex sends its default (config.toml only names the gateway).
            return run_codex(gateway.url, home, *args, key=gateway.key, timeout=AGENT_TIMEOUT, model=None)
        return run_gemini(gateway.url, home, *args, key=gateway.key, timeout=AGENT_TIMEOUT)


def model_of(call: dict[str, Any]) -> str:
    if call["format"].startswith("gemini."):
        return call["path"].split("/models/")[1].split(":")[0]
    return call["body"]["model"]


def is_streamed(call: dict[str, Any]) -> bool:
    return call["format"] == "gemini.streamGenerateContent" or (call["body"] or {}).get("stream") is True


def the_answer(call: dict[str, Any]) -> str:
    """What the sandbox answered to this call (its rules are deterministic: docs/sandbox.md)."""
    fmt = call["format"]
    reply = plan_reply(parse_request(fmt, call["body"], model=model_of(call) if fmt.startswith("gemini.") else "",
                                     anthropic_beta=call["headers"].get("anthropic-beta", "")))
    assert reply.text is not None, f"the last turn got a tool call, not text: {reply}"
    return reply.text


def words(text: str) -> str:
    return " ".join(text.split())


def check_agent_went_through(agent: str, upstream: str, result: Any, seen: list[dict[str, Any]],
                             model: str) -> dict[str, Any]:
    """(a) the agent printed the sandbox's answer to its last turn, (b) in the upstream's format."""
    output = f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    calls = [f"{c['method']} {c['path']} ({c['format']})" for c in seen]
    assert result.returncode == 0, f"{output}\n--- the sandbox saw\n" + "\n".join(calls)
    # Every model call went to this upstream, none to another (the route was switched everywhere).
    assert seen and {(c["format"] or "unknown").split(".")[0] for c in seen} == {upstream}, calls
    expected_format = streamed_format(agent, upstream)
    turns = [c for c in seen if c["format"] == expected_format and is_streamed(c)
             and model_of(c) == upstream_model(model, upstream)]
    assert turns, f"no streamed {expected_format} call for {model}: {calls}"
    answer = the_answer(turns[-1])
    assert words(answer) in words(result.stdout), f"expected {answer!r} in the agent's output\n{output}"
    return turns[-1]


@pytest.mark.parametrize("upstream", ["openai", "anthropic", "gemini"], indirect=True)
@pytest.mark.parametrize("agent", ["claude", "codex", "gemini"])
def test_the_agent_works_through_the_gateway_with_its_default_model(agent, upstream, agents_gateway, sandbox_log):
    result = run_agent(agent, agents_gateway)
    check_agent_went_through(agent, upstream, result, sandbox_log(), DEFAULT_MODELS[agent][0])


@pytest.mark.parametrize("upstream", ["anthropic"], indirect=True)
def test_claude_code_on_an_older_model_sends_its_plainer_request_through(upstream, agents_gateway, sandbox_log):
    result = run_agent("claude", agents_gateway, "--model", OLDER_CLAUDE)
    turn = check_agent_went_through("claude", upstream, result, sandbox_log(), OLDER_CLAUDE)
    # What makes it plainer (tests/fixtures/claude_code_sonnet45_request.json): a thinking budget,
    # not adaptive thinking, and no output_config; the pass-through kept it so.
    assert turn["body"]["thinking"]["type"] == "enabled" and "output_config" not in turn["body"]
