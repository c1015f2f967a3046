"""Each AuditPolicy row becomes its consumer's audit_body_mode (budgets.0006); 0005 then drops the table.

The body mode now comes with the key lookup the proxy makes anyway, so the audit
log no longer reads the consumer table. A consumer without a policy keeps an empty
mode, which means TOLLGATE_AUDIT_DEFAULT_BODY_MODE, as having no policy did.
"""
from django.db import migrations


def policies_to_consumers(apps, schema_editor):
    AuditPolicy = apps.get_model("audit", "AuditPolicy")
    Consumer = apps.get_model("budgets", "Consumer")
    db = schema_editor.connection.alias
    for consumer_id, body_mode in AuditPolicy.objects.using(db).values_list("consumer_id", "body_mode"):
        Consumer.objects.using(db).filter(pk=consumer_id).update(audit_body_mode=body_mode)


def consumers_to_policies(apps, schema_editor):
    AuditPolicy = apps.get_model("audit", "AuditPolicy")
    Consumer = apps.get_model("budgets", "Consumer")
    db = schema_editor.connection.alias
    AuditPolicy.objects.using(db).bulk_create(
        AuditPolicy(consumer_id=consumer_id, body_mode=body_mode)
        for consumer_id, body_mode in Consumer.objects.using(db).filter(audit_body_mode__isnull=False)
        .values_list("pk", "audit_body_mode")
    )


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0003_dailyusage"),
        ("budgets", "0006_consumer_audit_body_mode"),
    ]

    operations = [migrations.RunPython(policies_to_consumers, consumers_to_policies)]
