"""The admin edits every token class of a price (issue #16)."""
from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse

from budgets.models import ModelPrice

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "root-password-1"))
    return client


def test_the_change_form_saves_every_token_class(superuser_client):
    price = ModelPrice.objects.get(model="claude-opus-4-8")
    url = reverse("admin:budgets_modelprice_change", args=[price.pk])
    form = superuser_client.get(url).content.decode()
    for field in ("cached_input_per_million", "cache_write_per_million", "cache_write_1h_per_million",
                  "reasoning_output_per_million", "source", "provider"):
        assert f'name="{field}"' in form, field
    response = superuser_client.post(url, {
        "model": "claude-opus-4-8", "provider": "", "valid_from_0": "2026-01-01", "valid_from_1": "00:00:00",
        "input_per_million": "5000000", "cached_input_per_million": "400000", "cache_write_per_million": "6250000",
        "cache_write_1h_per_million": "10000000", "output_per_million": "25000000",
        "reasoning_output_per_million": "30000000", "source": "contract 2026-12", "note": "negotiated",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    price.refresh_from_db()
    assert (price.input_per_million, price.cached_input_per_million, price.cache_write_per_million,
            price.cache_write_1h_per_million, price.output_per_million, price.reasoning_output_per_million,
            price.source, price.note) == (5_000_000, 400_000, 6_250_000, 10_000_000, 25_000_000, 30_000_000,
                                          "contract 2026-12", "negotiated")
    assert LogEntry.objects.filter(object_id=str(price.pk), action_flag=CHANGE).exists()


def test_empty_classes_are_saved_as_empty(superuser_client):
    response = superuser_client.post(reverse("admin:budgets_modelprice_add"), {
        "model": "*", "provider": "local-llm", "valid_from_0": "2026-12-01", "valid_from_1": "00:00:00",
        "input_per_million": "100000", "output_per_million": "100000", "cached_input_per_million": "",
        "cache_write_per_million": "", "cache_write_1h_per_million": "", "reasoning_output_per_million": "",
        "source": "", "note": "",
    })
    assert response.status_code == 302
    price = ModelPrice.objects.get(model="*", provider="local-llm")
    assert price.cached_input_per_million is None and price.reasoning_output_per_million is None


def test_the_price_list_shows_the_cache_prices(superuser_client):
    page = superuser_client.get(reverse("admin:budgets_modelprice_changelist"), {"q": "claude-opus-4-8"})
    text = page.content.decode()
    assert "6.25 / 10" in text and "0.5" in text
