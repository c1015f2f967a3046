"""Chain format versions, token classes and lanes (issues #16 and #18).

Rows written before stay format version 1 (NULL) and become lane 0's history: their
place in the lane is their seq (one UPDATE of the table; on a large log run it at a
quiet time). New rows draw `seq` from a PostgreSQL sequence started past the largest
stored one, so `seq` stays the primary key, unique over lanes and growing with time.
The sink's cursor becomes one per lane; the existing one is lane 0's (its last_seq was
a seq of lane 0's history, which is its place in the lane).
"""
from __future__ import annotations

from django.db import migrations, models

SEQUENCE = "audit_event_seq"  # audit.services.SEQUENCE


def lane_zero(apps, schema_editor) -> None:
    table = schema_editor.quote_name("audit_auditevent")
    schema_editor.execute(f"UPDATE {table} SET lane_seq = seq, lane = 0")  # noqa: S608 (a constant name)


def sequence_create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE} AS bigint")
    schema_editor.execute(f"SELECT setval('{SEQUENCE}', COALESCE(MAX(seq), 0) + 1, false) FROM audit_auditevent")  # noqa: S608


def sequence_drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0007_event_usage_source"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent", name="format",
            field=models.PositiveSmallIntegerField(blank=True, null=True, choices=[
                (1, "1: the columns of issue #15, usage_source only when set"),
                (2, "2: every column, token classes and lane included")]),
        ),
        migrations.AddField(model_name="auditevent", name="cache_read_tokens",
                            field=models.IntegerField(blank=True, null=True)),
        migrations.AddField(model_name="auditevent", name="cache_write_tokens",
                            field=models.IntegerField(blank=True, null=True,
                                                      help_text="Default (5-minute) cache writes.")),
        migrations.AddField(model_name="auditevent", name="cache_write_1h_tokens",
                            field=models.IntegerField(blank=True, null=True, help_text="One-hour cache writes.")),
        migrations.AddField(model_name="auditevent", name="reasoning_tokens",
                            field=models.IntegerField(blank=True, null=True)),
        migrations.AddField(model_name="auditevent", name="lane",
                            field=models.PositiveSmallIntegerField(default=0)),
        migrations.AddField(model_name="auditevent", name="lane_seq",
                            field=models.BigIntegerField(null=True)),
        migrations.RunPython(lane_zero, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditevent", name="lane_seq",
            field=models.BigIntegerField(help_text="Place in the lane's chain: 1, 2, 3... without gaps."),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["lane", "lane_seq"], name="audit_event_lane_seq"),
        ),
        migrations.AlterField(
            model_name="auditchainhead", name="seq",
            field=models.BigIntegerField(default=0, help_text="The lane's last lane_seq."),
        ),
        migrations.AddField(model_name="auditsinkcursor", name="lane",
                            field=models.PositiveSmallIntegerField(default=0)),
        migrations.AlterField(model_name="auditsinkcursor", name="name", field=models.CharField(max_length=50)),
        migrations.AddConstraint(
            model_name="auditsinkcursor",
            constraint=models.UniqueConstraint(fields=["name", "lane"], name="audit_sink_cursor_lane"),
        ),
        migrations.RunPython(sequence_create, sequence_drop),
    ]
