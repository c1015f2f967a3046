import django.core.validators
from django.db import migrations, models

import proxy.models


class Migration(migrations.Migration):

    dependencies = [
        ("proxy", "0002_route_default_max_tokens"),
    ]

    operations = [
        migrations.AddField(
            model_name="provider",
            name="health_check_interval_seconds",
            field=models.PositiveIntegerField(
                default=60,
                help_text="How often the health check calls the provider's model list (no tokens); 0: never.",
            ),
        ),
        migrations.AddField(
            model_name="provider",
            name="last_check_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="provider",
            name="last_check_ok",
            field=models.BooleanField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name="provider",
            name="last_check_error",
            field=models.TextField(blank=True, editable=False),
        ),
        migrations.AddField(
            model_name="modelroute",
            name="max_retries",
            field=models.PositiveSmallIntegerField(
                default=2, help_text="Further deployments tried after the first one fails (0: no failover)."
            ),
        ),
        migrations.AddField(
            model_name="modelroute",
            name="retry_budget_seconds",
            field=models.FloatField(
                default=30.0,
                help_text="No new attempt starts once this long has passed since the first one began.",
                validators=[django.core.validators.MinValueValidator(0)],
            ),
        ),
        migrations.AddField(
            model_name="modelroute",
            name="failover_statuses",
            field=models.JSONField(
                blank=True,
                default=proxy.models.default_failover_statuses,
                help_text="Provider HTTP statuses that make the gateway try the next deployment. "
                "Connect errors and timeouts always do.",
            ),
        ),
        migrations.AddField(
            model_name="modelroute",
            name="allow_pin_fallback",
            field=models.BooleanField(
                default=False,
                help_text="When a request pins a provider (X-Provider) that cannot serve it, use the route's "
                "other deployments instead of refusing.",
            ),
        ),
        migrations.AddField(
            model_name="deployment",
            name="last_error",
            field=models.TextField(blank=True, editable=False),
        ),
        migrations.AddField(
            model_name="deployment",
            name="last_error_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
