"""Confine provider credential references (issue #17, docs/providers.md#credentials).

Adds the change_provider_credentials permission and the reference validators. Existing rows
are not changed: a provider whose reference breaks the rules gets no credential until it is
fixed (proxy.credentials refuses it at every read), and this migration lists such providers.
"""
import sys

import django.core.validators
from django.db import migrations, models

import proxy.credentials


def report_references(apps, schema_editor):
    from proxy.credentials import env_problem, file_problem

    Provider = apps.get_model("proxy", "Provider")
    for provider in Provider.objects.using(schema_editor.connection.alias).order_by("name"):
        problem = (env_problem(provider.api_key_env) if provider.api_key_env
                   else file_problem(provider.api_key_file) if provider.api_key_file else None)
        if problem:
            sys.stdout.write(f"\n  WARNING provider {provider.name}: {problem}. Until it is fixed the "
                             "provider gets no credential.")


class Migration(migrations.Migration):

    dependencies = [
        ('proxy', '0003_failover_and_health'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='provider',
            options={'ordering': ['name'], 'permissions': [('change_provider_credentials', 'Can change provider credentials (base URL and API key reference)')]},
        ),
        migrations.AlterField(
            model_name='provider',
            name='api_key_env',
            field=models.CharField(blank=True, help_text="Environment variable holding the provider's API key; its name starts with TOLLGATE_PROVIDER_.", max_length=100, validators=[django.core.validators.RegexValidator('^[A-Za-z_][A-Za-z0-9_]*$', 'Not an environment variable name.'), proxy.credentials.validate_env_reference]),
        ),
        migrations.AlterField(
            model_name='provider',
            name='api_key_file',
            field=models.CharField(blank=True, help_text='Or a file holding it (a mounted secret) inside TOLLGATE_SECRETS_DIR; a relative name is taken in that directory.', max_length=500, validators=[proxy.credentials.validate_file_reference]),
        ),
        migrations.AlterField(
            model_name='provider',
            name='base_url',
            field=models.URLField(help_text="As the provider's own SDK takes it, e.g. https://api.openai.com/v1. The credential is sent here.", max_length=500),
        ),
        migrations.RunPython(report_references, migrations.RunPython.noop),
    ]
