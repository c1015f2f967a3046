"""Key ids on rows and the head, the head's MAC, and the anchors table (issue #17).

Existing rows keep key_id null (sealed before key ids: the legacy derived key, or an explicit
key of that time). The head is sealed here with the configured key, so it verifies at once.
"""
from __future__ import annotations

import django.utils.timezone
from django.db import migrations, models


def seal_head(apps, schema_editor) -> None:
    from audit.chain import head_fields

    head_model = apps.get_model("audit", "AuditChainHead")
    for head in head_model.objects.all():
        head_model.objects.filter(pk=head.pk).update(**head_fields(head.seq, head.hash))


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0005_delete_auditpolicy"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent", name="key_id",
            field=models.CharField(blank=True, max_length=16, null=True),
        ),
        migrations.AddField(
            model_name="auditchainhead", name="key_id",
            field=models.CharField(blank=True, max_length=16, null=True),
        ),
        migrations.AddField(
            model_name="auditchainhead", name="mac",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.CreateModel(
            name="AuditAnchor",
            fields=[
                ("number", models.BigIntegerField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("body", models.TextField()),
                ("digest", models.CharField(help_text="SHA-256 of the body; the next anchor names it.",
                                            max_length=64)),
                ("signature", models.CharField(blank=True, help_text="Ed25519, hex; empty if unsigned.",
                                               max_length=128)),
            ],
            options={"ordering": ["-number"]},
        ),
        migrations.RunPython(seal_head, migrations.RunPython.noop),
    ]
