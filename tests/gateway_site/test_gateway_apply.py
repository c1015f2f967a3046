from __future__ import annotations

import io
import json
import textwrap
from functools import partial
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgets.keys import key_issue
from budgets.models import ApiKey, Consumer
from proxy.models import Deployment, ModelRoute, Provider

pytestmark = pytest.mark.django_db

BASE = """\
providers:
  - name: openai-main
    kind: openai
    base_url: https://api.openai.com/v1
    api_key_env: TOLLGATE_PROVIDER_OPENAI_API_KEY
    timeout_seconds: 60
  - name: anthropic-main
    kind: anthropic
    base_url: https://api.anthropic.com
    api_key_file: anthropic
    extra_headers: {anthropic-version: "2023-06-01"}
routes:
  - model: smart
    description: The best we have
    deployments:
      - {provider: openai-main, model: gpt-4o, weight: 3, priority: 0}
      - {provider: anthropic-main, model: claude-sonnet-4-5, weight: 1, priority: 1}
consumers:
  - name: production-agent
    description: Production AI agent
"""


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str, name: str = "gateway.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def apply(path: Path, *args: str, credentials: bool = True) -> str:
    """Run gateway_apply; with --allow-credentials unless `credentials` is False (tests of providers'
    guarded fields are in tests/security/test_credentials.py)."""
    out = io.StringIO()
    flags = ["--allow-credentials"] if credentials else []
    call_command("gateway_apply", str(path), *args, *flags, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def apply_error(path: Path, *args: str, credentials: bool = True) -> str:
    with pytest.raises(CommandError) as info:
        apply(path, *args, credentials=credentials)
    return str(info.value)


def export() -> str:
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    return out.getvalue()


def writes(queries: CaptureQueriesContext) -> list[str]:
    sql = [q["sql"].lstrip().upper() for q in queries.captured_queries]
    return [q for q in sql if q.startswith(("INSERT", "UPDATE", "DELETE"))]


def test_it_creates_everything_from_an_empty_database(write) -> None:
    output = apply(write(BASE))

    openai = Provider.objects.get(name="openai-main")
    assert (openai.kind, openai.base_url, openai.api_key_env, openai.timeout_seconds) == (
        "openai", "https://api.openai.com/v1", "TOLLGATE_PROVIDER_OPENAI_API_KEY", 60.0,
    )
    anthropic = Provider.objects.get(name="anthropic-main")
    assert anthropic.extra_headers == {"anthropic-version": "2023-06-01"}
    assert anthropic.api_key_file == "anthropic"
    route = ModelRoute.objects.get(model="smart")
    assert route.description == "The best we have"
    assert [(d.provider.name, d.upstream_model, d.weight, d.priority) for d in route.deployments.all()] == [
        ("openai-main", "gpt-4o", 3, 0),
        ("anthropic-main", "claude-sonnet-4-5", 1, 1),
    ]
    assert Consumer.objects.get(name="production-agent").description == "Production AI agent"
    assert "+ provider openai-main (kind=openai" in output
    assert "+ deployment smart → openai-main/gpt-4o (weight=3, priority=0)" in output
    assert output.strip().endswith("Applied 6 changes.")


def test_it_changes_nothing_the_second_time(write) -> None:
    path = write(BASE)
    apply(path)
    stamps = [p.updated_at for p in Provider.objects.all()] + [r.updated_at for r in ModelRoute.objects.all()]
    deployment_ids = set(Deployment.objects.values_list("id", flat=True))

    with CaptureQueriesContext(connection) as queries:
        output = apply(path)

    assert output.strip() == "No changes."
    assert writes(queries) == []
    assert [p.updated_at for p in Provider.objects.all()] + [r.updated_at for r in ModelRoute.objects.all()] == stamps
    assert set(Deployment.objects.values_list("id", flat=True)) == deployment_ids


def test_it_updates_a_weight_and_keeps_the_row(write) -> None:
    apply(write(BASE))
    row = Deployment.objects.get(upstream_model="gpt-4o")

    output = apply(write(BASE.replace("weight: 3", "weight: 5")))

    assert output.splitlines() == [
        "~ deployment smart → openai-main/gpt-4o: weight 3 → 5",
        "Applied 1 change.",
    ]
    row_after = Deployment.objects.get(upstream_model="gpt-4o")
    assert (row_after.pk, row_after.weight) == (row.pk, 5)


def test_it_updates_provider_fields_and_resets_omitted_keys_to_defaults(write) -> None:
    apply(write(BASE.replace("    timeout_seconds: 60\n", "    timeout_seconds: 60\n    enabled: false\n")))
    assert Provider.objects.get(name="openai-main").enabled is False

    output = apply(write(BASE.replace("timeout_seconds: 60", "timeout_seconds: 30")))

    assert "~ provider openai-main: timeout_seconds 60 → 30, enabled false → true" in output
    provider = Provider.objects.get(name="openai-main")
    assert (provider.timeout_seconds, provider.enabled) == (30.0, True)


def test_it_sets_a_route_default_max_tokens_and_validates_it(write) -> None:
    apply(write(BASE))
    assert ModelRoute.objects.get(model="smart").default_max_tokens == 1024  # the model's default

    output = apply(write(BASE.replace("    description: The best we have\n", "    default_max_tokens: 4096\n")))

    assert '~ route smart: description "The best we have" → "", default_max_tokens 1024 → 4096' in output
    assert ModelRoute.objects.get(model="smart").default_max_tokens == 4096
    message = apply_error(write(BASE.replace("    description: The best we have\n", "    default_max_tokens: 0\n")))
    assert ":13: invalid route 'smart': default_max_tokens:" in message


def test_it_deletes_a_deployment_removed_from_the_file(write) -> None:
    apply(write(BASE))
    kept = Deployment.objects.get(upstream_model="gpt-4o")
    without_claude = BASE.replace(
        "      - {provider: anthropic-main, model: claude-sonnet-4-5, weight: 1, priority: 1}\n", ""
    )

    output = apply(write(without_claude))

    assert "- deployment smart → anthropic-main/claude-sonnet-4-5" in output
    assert list(Deployment.objects.values_list("pk", flat=True)) == [kept.pk]
    assert Provider.objects.filter(name="anthropic-main").exists()  # still listed under providers


def test_it_replaces_a_deployment_whose_upstream_model_changed(write) -> None:
    apply(write(BASE))

    output = apply(write(BASE.replace("model: gpt-4o,", "model: gpt-4.1,")))

    assert "- deployment smart → openai-main/gpt-4o" in output
    assert "+ deployment smart → openai-main/gpt-4.1 (weight=3, priority=0)" in output
    assert set(Deployment.objects.values_list("upstream_model", flat=True)) == {"gpt-4.1", "claude-sonnet-4-5"}


def test_dry_run_prints_the_diff_and_writes_nothing(write) -> None:
    apply(write(BASE))
    changed = BASE.replace("weight: 3", "weight: 4").replace(
        "consumers:\n", "consumers:\n  - name: ci\n"
    )

    with CaptureQueriesContext(connection) as queries:
        output = apply(write(changed), "--dry-run")

    assert output.splitlines() == [
        "~ deployment smart → openai-main/gpt-4o: weight 3 → 4",
        "+ consumer ci",
        "Dry run: 2 changes, nothing written.",
    ]
    assert writes(queries) == []
    assert Deployment.objects.get(upstream_model="gpt-4o").weight == 3
    assert not Consumer.objects.filter(name="ci").exists()


def test_dry_run_from_empty_writes_nothing(write) -> None:
    output = apply(write(BASE), "--dry-run")

    assert "+ route smart" in output
    assert (Provider.objects.count(), ModelRoute.objects.count(), Consumer.objects.count()) == (0, 0, 0)


def test_it_leaves_unlisted_items_alone_and_says_so(write) -> None:
    apply(write(BASE))
    Provider.objects.create(name="legacy", kind="openai", base_url="https://legacy.example/v1")
    Consumer.objects.create(name="old-bot")

    output = apply(write(BASE))

    assert "Not in the file, left alone (--prune deletes them): provider legacy, consumer old-bot" in output
    assert output.strip().endswith("No changes.")
    assert Provider.objects.filter(name="legacy").exists()
    assert Consumer.objects.filter(name="old-bot").exists()


def test_a_section_missing_from_the_file_is_left_alone(write) -> None:
    apply(write(BASE))

    output = apply(write("consumers:\n  - name: production-agent\n    description: Production AI agent\n"))

    assert output.strip() == "No changes."
    assert ModelRoute.objects.filter(model="smart").exists()


def test_prune_deletes_what_the_file_does_not_list(write) -> None:
    apply(write(BASE))
    legacy = Provider.objects.create(name="legacy", kind="openai", base_url="https://legacy.example/v1")
    old = ModelRoute.objects.create(model="old")
    Deployment.objects.create(route=old, provider=legacy, upstream_model="gpt-3.5")
    key_issue(consumer=Consumer.objects.create(name="old-bot"))

    output = apply(write(BASE), "--prune")

    assert output.splitlines() == [
        "- consumer old-bot (and its 1 key)",
        "- route old (and its 1 deployment)",
        "- provider legacy",
        "Applied 3 changes.",
    ]
    assert not Provider.objects.filter(name="legacy").exists()
    assert not ApiKey.objects.exists()


def test_prune_refuses_to_delete_a_provider_an_unlisted_route_uses(write) -> None:
    apply(write(BASE))

    message = apply_error(
        write("providers:\n  - {name: openai-main, kind: openai, base_url: https://api.openai.com/v1}\n"),
        "--prune",
    )

    assert "gateway.yaml:1: --prune would delete provider 'anthropic-main'" in message
    assert "smart" in message
    assert Provider.objects.filter(name="anthropic-main").exists()


def test_prune_refuses_a_deployment_naming_a_provider_it_would_delete(write) -> None:
    apply(write(BASE))
    without_anthropic = BASE.replace(
        "  - name: anthropic-main\n    kind: anthropic\n    base_url: https://api.anthropic.com\n"
        "    api_key_file: anthropic\n    extra_headers: {anthropic-version: \"2023-06-01\"}\n",
        "",
    )

    message = apply_error(write(without_anthropic), "--prune")

    assert ":12: deployment of route 'smart' names unknown provider 'anthropic-main'" in message
    assert "--prune would delete it" in message
    # Without --prune the provider stays, so the same file is fine.
    assert apply(write(without_anthropic)).splitlines() == [
        "Not in the file, left alone (--prune deletes them): provider anthropic-main",
        "No changes.",
    ]


def test_unknown_key_error_names_the_line(write) -> None:
    path = write(BASE.replace("weight: 1, priority: 1}", "weigth: 1, priority: 1}"))

    message = apply_error(path)

    assert message.startswith(
        f"{path}:17: unknown key 'weigth' in deployment (expected one of: provider, model, weight, priority, enabled)"
    )


def test_unknown_provider_key_and_section_are_errors(write) -> None:
    message = apply_error(write(BASE.replace("    timeout_seconds: 60", "    timeout: 60")))
    assert ":6: unknown key 'timeout' in provider" in message

    message = apply_error(write(BASE + "pricing: []\n"))
    assert ":21: unknown section 'pricing' (expected one of:" in message


def test_a_deployment_naming_an_unknown_provider_is_refused(write) -> None:
    path = write(BASE.replace("provider: anthropic-main,", "provider: antropic-main,"))

    message = apply_error(path)

    assert f"{path}:17: deployment of route 'smart' names unknown provider 'antropic-main'" in message
    assert not Provider.objects.exists()


def test_a_deployment_may_name_a_provider_that_is_only_in_the_database(write) -> None:
    apply(write(BASE))

    apply(write("routes:\n  - model: fast\n    deployments:\n      - {provider: openai-main, model: gpt-4o-mini}\n"))

    assert ModelRoute.objects.get(model="fast").deployments.get().provider.name == "openai-main"


def test_an_invalid_kind_is_refused(write) -> None:
    message = apply_error(write(BASE.replace("kind: anthropic", "kind: claude")))

    expected = "(expected one of: openai, anthropic, gemini, openai_compatible, sandbox)"
    assert f":8: invalid kind 'claude' {expected}" in message


def test_a_plaintext_api_key_is_refused(write) -> None:
    message = apply_error(write(BASE.replace("    api_key_env: TOLLGATE_PROVIDER_OPENAI_API_KEY",
                                             "    api_key: sk-live-123")))

    assert ":5: 'api_key'" in message
    assert "api_key_env" in message and "api_key_file" in message
    assert "never stored in the database" in message
    assert "sk-live-123" not in message
    assert not Provider.objects.exists()


def test_a_credential_header_is_refused(write) -> None:
    message = apply_error(write(BASE.replace('{anthropic-version: "2023-06-01"}', "{x-api-key: sk-ant-1}")))

    assert ":11: extra_headers may not carry 'x-api-key'" in message


def test_a_key_in_a_consumer_is_refused(write) -> None:
    message = apply_error(write(BASE + "    key: tg-abc\n"))

    assert ":21: 'key': keys are never written in the configuration file" in message
    assert "issuekey" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("timeout_seconds: 60", "timeout_seconds: 60s", ":6: timeout_seconds must be a number, got string '60s'"),
        ("weight: 3", "weight: 2.5", ":16: weight must be a whole number, got number 2.5"),
        ("weight: 3", "weight: true", ":16: weight must be a whole number, got boolean true"),
        ('"2023-06-01"', "2023-06-01", ":11: extra_headers must map header names to strings"),
        ("  - name: production-agent", "  - name: 42", ":19: name must be a string (quote it), got integer 42"),
        ("consumers:\n  - name: production-agent\n    description: Production AI agent\n", "consumers: bot\n",
         ":18: 'consumers' must be a list of consumers, got string 'bot'"),
        ("consumers:\n  - name: production-agent\n    description: Production AI agent\n", "consumers:\n",
         ":18: 'consumers' is empty; write `consumers: []` to mean none"),
        ("https://api.anthropic.com", "not-a-url",
         ":7: invalid provider 'anthropic-main': base_url: Enter a valid URL."),
        ("    api_key_env: TOLLGATE_PROVIDER_OPENAI_API_KEY",
         "    api_key_env: TOLLGATE_PROVIDER_OPENAI_API_KEY\n    api_key_file: x",
         ":2: invalid provider 'openai-main': Name the credential by environment variable or by file, not both."),
        ("weight: 1, priority: 1", "weight: -1, priority: 1", ":17: invalid deployment: weight:"),
        ("  - model: smart", "  - model: smart\n    model: smarter", ":14: duplicate key 'model' (first at line 13)"),
        ("routes:", "consumers: []\nroutes:", ":19: duplicate key 'consumers' (first at line 12)"),
        ("- name: anthropic-main", "- name: openai-main", ":7: duplicate provider 'openai-main' (first at"),
        ("provider: anthropic-main, model: claude-sonnet-4-5", "provider: openai-main, model: gpt-4o",
         ":17: duplicate deployment openai-main/gpt-4o (first at"),
        ("providers:\n", "providers:\n  - just-a-name\n", ":2: each provider must be a mapping"),
        ("description: The best we have", "description: [unclosed", ":15: not valid YAML"),
    ],
)
def test_it_reports_bad_values_with_file_and_line(write, old: str, new: str, expected: str) -> None:
    assert old in BASE
    path = write(BASE.replace(old, new, 1))

    message = apply_error(path)

    assert message.startswith(str(path)), message
    assert expected in message, message
    assert (Provider.objects.count(), ModelRoute.objects.count(), Consumer.objects.count()) == (0, 0, 0)


def test_a_missing_file_is_a_command_error(tmp_path: Path) -> None:
    message = apply_error(tmp_path / "nope.yaml")

    assert "nope.yaml: cannot read the file" in message


def test_an_empty_file_changes_nothing(write) -> None:
    assert apply(write("")).strip() == "No changes."


def test_a_late_error_rolls_everything_back(write, monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer is the last write of the plan; by then providers, the route and its
    # deployments have been saved inside the transaction.
    def refuse(self: Consumer, *args: object, **kwargs: object) -> None:
        raise IntegrityError("simulated failure")

    monkeypatch.setattr(Consumer, "save", refuse)

    message = apply_error(write(BASE))

    assert ":19: the database refused + consumer production-agent" in message
    assert "Nothing was written." in message
    assert (Provider.objects.count(), ModelRoute.objects.count(), Deployment.objects.count()) == (0, 0, 0)


def test_export_round_trips_through_an_empty_database(write) -> None:
    apply(write(BASE.replace("    timeout_seconds: 60\n", "    timeout_seconds: 60\n    enabled: false\n")))
    Consumer.objects.create(name="multi", description="line one\nline two: with colon\n", active=False)
    first = export()

    Deployment.objects.all().delete()
    ModelRoute.objects.all().delete()
    Provider.objects.all().delete()
    Consumer.objects.all().delete()
    apply(write(first, "exported.yaml"))

    assert export() == first
    assert apply(write(first, "exported.yaml")).strip() == "No changes."


def test_export_writes_the_documented_format_and_no_secrets(write) -> None:
    apply(write(BASE))
    key_issue(consumer=Consumer.objects.get(name="production-agent"))

    text = export()

    assert "      - {provider: openai-main, model: gpt-4o, weight: 3, priority: 0}\n" in text
    assert "    timeout_seconds: 60\n" in text
    assert "    extra_headers: {anthropic-version: '2023-06-01'}\n" in text
    assert "tg-" not in text


def test_export_of_an_empty_database_applies_cleanly(write) -> None:
    text = export()

    assert "providers: []" in text
    assert apply(write(text)).strip() == "No changes."


def test_the_example_file_applies() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "gateway.yaml"

    apply(path)

    assert ModelRoute.objects.get(model="smart").deployments.count() == 3
    assert apply(path).strip() == "No changes."


_names = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
_deployment = st.tuples(st.integers(0, 2), _names, st.integers(0, 9), st.integers(-2, 2), st.booleans())
# Text that survives a YAML double-quoted scalar (no control or line-separator characters).
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cn", "Zl", "Zp"]), max_size=20)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    providers=st.lists(_names, min_size=1, max_size=3, unique=True),
    routes=st.dictionaries(_names, st.tuples(_text, st.lists(_deployment, max_size=4)), max_size=3),
)
def test_any_applied_config_round_trips(write, providers, routes) -> None:
    Deployment.objects.all().delete()
    ModelRoute.objects.all().delete()
    Provider.objects.all().delete()
    lines = ["providers:"]
    q = partial(json.dumps, ensure_ascii=False)  # names like `no` or `1e3` must stay strings
    lines += [f"  - {{name: {q(name)}, kind: sandbox, base_url: 'http://127.0.0.1:8787'}}" for name in providers]
    lines.append("routes:" if routes else "routes: []")
    for model, (description, deployments) in routes.items():
        unique = {(providers[p % len(providers)], m): (w, pr, on) for p, m, w, pr, on in deployments}
        lines += [f"  - model: {q(model)}", f"    description: {q(description)}"]
        lines.append("    deployments:" if unique else "    deployments: []")
        lines += [
            f"      - {{provider: {q(p)}, model: {q(m)}, weight: {w}, priority: {pr}, enabled: {str(on).lower()}}}"
            for (p, m), (w, pr, on) in unique.items()
        ]
    apply(write("\n".join(lines) + "\n"))
    first = export()

    Deployment.objects.all().delete()
    ModelRoute.objects.all().delete()
    Provider.objects.all().delete()
    apply(write(first, "exported.yaml"))

    assert export() == first
