"""Create the `gateway-admin` and `compliance` groups and the audit chain's head row."""
from django.db import migrations


def forwards(apps, schema_editor):
    from audit.permissions import groups_ensure

    groups_ensure(apps, using=schema_editor.connection.alias)
    AuditChainHead = apps.get_model("audit", "AuditChainHead")
    AuditChainHead.objects.using(schema_editor.connection.alias).get_or_create(pk=1)


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
