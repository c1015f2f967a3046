"""DailyUsage joins the audit app (a rollup of audit events), keeping its table: state only, no rows move.

budgets.0005_move_dailyusage_to_audit forgets the model on the budgets side.
"""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0002_groups_and_chain_head"),
        # The table was created there, and stays.
        ("budgets", "0004_daily_usage"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="DailyUsage",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("day", models.DateField()),
                        ("dimension", models.CharField(choices=[("total", "total"), ("consumer", "consumer"),
                                                                ("provider", "provider"),
                                                                ("model", "upstream model")], max_length=10)),
                        ("name", models.CharField(blank=True, max_length=200)),
                        ("requests", models.BigIntegerField(default=0)),
                        ("errors", models.BigIntegerField(default=0)),
                        ("failovers", models.BigIntegerField(default=0)),
                        ("tokens", models.BigIntegerField(default=0)),
                        ("cost_micros", models.BigIntegerField(default=0)),
                    ],
                    options={
                        "verbose_name_plural": "daily usage",
                        "db_table": "budgets_dailyusage",
                        "constraints": [models.UniqueConstraint(fields=("dimension", "day", "name"),
                                                                name="daily_usage_unique")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
