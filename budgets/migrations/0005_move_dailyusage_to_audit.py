"""DailyUsage now belongs to the audit app (audit.0003_dailyusage), which keeps this table: state only."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("budgets", "0004_daily_usage"),
        # The audit app owns the table first, so it is never without a model.
        ("audit", "0003_dailyusage"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="DailyUsage")],
            database_operations=[],
        ),
    ]
