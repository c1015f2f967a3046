"""AuditPolicy is gone: its rows were copied onto Consumer.audit_body_mode by 0004."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0004_auditpolicy_to_consumer"),
    ]

    operations = [migrations.DeleteModel(name="AuditPolicy")]
