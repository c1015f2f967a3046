"""The admin in headless Chromium (Debian's chromium driven by Playwright): what a person does, end to end.

The server is `manage.py runserver --insecure`: it serves the admin's static files
without DEBUG and without a reverse proxy, which production has (docs/deployment.md).
"""
from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import connection

from tests.servers import ROOT, database_url_for, free_port, server_env, subprocess_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The README's screenshots are refreshed only on request (TOLLGATE_UPDATE_SCREENSHOTS=1),
# so a test run leaves the work tree clean.
SCREENSHOTS = ROOT / ("docs/screenshots" if os.environ.get("TOLLGATE_UPDATE_SCREENSHOTS") else "var/screenshots")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install chromium; .ci/run installs it)"),
]


def _seed() -> SimpleNamespace:
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from budgets.models import Budget, BudgetUsage, Consumer
    from budgets.periods import window_at
    from tests.audit.conftest import add_events

    users = get_user_model().objects
    gwen = users.create_user("browser-gwen", password="gwen-Browser-pw-1", is_staff=True)
    gwen.groups.add(Group.objects.get(name="gateway-admin"))
    carl = users.create_user("browser-carl", password="carl-Browser-pw-1", is_staff=True)
    carl.groups.add(Group.objects.get(name="compliance"))
    now = timezone.now()
    for i, name in enumerate(["research-agents", "support-bot", "batch-jobs"]):
        consumer = Consumer.objects.create(name=name)
        budget = Budget.objects.create(consumer=consumer, metric="tokens", limit=100_000)
        window = window_at(budget.period, budget.timezone, now)
        BudgetUsage.objects.create(budget=budget, period_start=window.period_start, starts_at=window.starts_at,
                                   ends_at=window.ends_at, used=[92_000, 45_000, 12_000][i])
        add_events(60 * (3 - i), start=now - timedelta(days=20), step=timedelta(hours=2 + i), consumer=name,
                   provider=["openai", "anthropic", "gemini"][i], upstream_model=["gpt-4o", "claude", "gemini"][i],
                   prompt_tokens=400 * (i + 1), completion_tokens=150)
        add_events(4 * (i + 1), start=now - timedelta(days=10), step=timedelta(hours=20), consumer=name,
                   provider=["openai", "anthropic", "gemini"][i], status=[503, 200, 429][i],
                   error_class=["upstream_error", "", "rate_limited"][i], attempts=2)
    # An admin's change in the log, so compliance's view of it never depends on another test having run first.
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    seeded = Consumer.objects.get(name="research-agents")
    LogEntry.objects.create(user=gwen, content_type=ContentType.objects.get_for_model(Consumer),
                            object_id=str(seeded.pk), object_repr=seeded.name, action_flag=CHANGE,
                            change_message="Changed description.")
    return SimpleNamespace(gwen=("browser-gwen", "gwen-Browser-pw-1"), carl=("browser-carl", "carl-Browser-pw-1"))


def _unseed() -> None:
    from django.contrib.admin.models import LogEntry
    from django.contrib.auth import get_user_model

    from audit.models import AuditChainHead, AuditEvent, DailyUsage
    from budgets.models import Consumer

    LogEntry.objects.filter(user__username__startswith="browser-").delete()
    get_user_model().objects.filter(username__startswith="browser-").delete()
    Consumer.objects.filter(name__in=["research-agents", "support-bot", "batch-jobs", "browser-team"]).delete()
    AuditEvent.objects.all().delete()
    AuditChainHead.objects.all().delete()
    DailyUsage.objects.all().delete()


@pytest.fixture(scope="module")
def server(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    port = free_port()
    with django_db_blocker.unblock():
        seeded = _seed()
        database_url = database_url_for(connection.settings_dict)
    env = server_env(DATABASE_URL=database_url)
    command = [sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload", "--insecure", f"127.0.0.1:{port}"]
    try:
        with subprocess_server(command, health_url=f"http://127.0.0.1:{port}/healthz", env=env,
                               log_name="admin-runserver"):
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}", **vars(seeded))
    finally:
        with django_db_blocker.unblock():
            _unseed()


@pytest.fixture(scope="module")
def browser(server) -> Iterator:
    # After the server: Playwright's sync API runs an event loop in this thread, where Django refuses queries.
    from playwright.sync_api import sync_playwright

    # pytest-django opens each test's transaction in this thread while Playwright's loop
    # idles in it; no Django code runs on that loop, so Django's async guard is lifted here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def _page(browser, server, who: tuple[str, str]):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.goto("/admin/login/")
    page.fill("#id_username", who[0])
    page.fill("#id_password", who[1])
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    return page


def _distinct_colours(page, png: bytes) -> int:
    """Distinct pixel colours of a screenshot, counted by the browser itself (no imaging library needed)."""
    data = "data:image/png;base64," + base64.b64encode(png).decode()
    return page.evaluate("""async (src) => {
        const img = new Image(); img.src = src; await img.decode();
        const canvas = document.createElement("canvas"); canvas.width = img.width; canvas.height = img.height;
        const ctx = canvas.getContext("2d"); ctx.drawImage(img, 0, 0);
        const pixels = ctx.getImageData(0, 0, img.width, img.height).data; const seen = new Set();
        for (let i = 0; i < pixels.length; i += 4) seen.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
        return seen.size; }""", data)


def test_an_admin_creates_a_consumer_issues_a_key_and_copies_it(browser, server):
    page = _page(browser, server, server.gwen)
    page.goto("/admin/budgets/consumer/add/")
    page.fill("#id_name", "browser-team")
    page.fill("#id_description", "Created by the browser test")
    page.click("input[name=_continue]")
    page.wait_for_selector("#issue-key")
    page.click("#issue-key")
    page.wait_for_selector("#id_name")
    page.fill("#id_name", "laptop")
    page.click("input[name=_save]")
    page.wait_for_selector("#issued-key")
    page.click("#copy-key")
    page.wait_for_selector("text=Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.input_value("#issued-key") and copied.startswith("tg-")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "key-issued.png"))
    page.goto(f"/admin/budgets/apikey/?q={copied[:10]}")
    assert "browser-team" in page.inner_text("#result_list")
    assert copied not in page.content()  # shown once, never again
    page.context.close()


def test_the_dashboard_draws_its_charts(browser, server):
    page = _page(browser, server, server.gwen)
    page.click("#tg-dashboard-link")
    page.wait_for_selector("#chart-tokens svg rect")
    assert page.locator("svg.tg-chart").count() == 6
    assert page.locator("#chart-tokens svg rect").count() > 20  # columns of three consumers over 20 days
    assert "research-agents" in page.locator("#tg-nearest-budgets").inner_text()
    png = page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    assert _distinct_colours(page, png) > 20  # not blank: axes, text and coloured columns
    chart = page.locator("#chart-tokens").screenshot()
    assert _distinct_colours(page, chart) > 5
    page.context.close()


def test_compliance_sees_the_audit_log_but_cannot_edit(browser, server):
    page = _page(browser, server, server.carl)
    # Compliance sees consumers (their audit body mode) read-only, and cannot add one (issue #13).
    assert page.goto("/admin/budgets/consumer/").status == 200
    assert page.goto("/admin/budgets/consumer/add/").status == 403
    page.goto("/admin/admin/logentry/")
    page.wait_for_selector("#result_list")
    assert "research-agents" in page.inner_text("#result_list")
    page.locator("#result_list tbody th a").first.click()
    page.wait_for_selector("#content-main")
    assert page.locator("input[name=_save]").count() == 0  # read-only: nothing to submit
    page.goto("/admin/audit/auditevent/")
    assert page.locator("#result_list").count() == 1
    assert page.locator("a.addlink").count() == 0
    assert page.goto("/admin/dashboard/").status == 200
    page.context.close()
