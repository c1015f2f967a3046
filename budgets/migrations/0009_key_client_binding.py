# Clients a key may be used from (issue #17, docs/admin.md#key-binding); renumber freely at merge.

from django.db import migrations, models

import budgets.binding


class Migration(migrations.Migration):

    dependencies = [
        ('budgets', '0008_seed_model_price_token_classes'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='allowed_networks',
            field=models.JSONField(blank=True, default=list, help_text='Client networks (CIDRs, IPv4 or IPv6, e.g. 10.0.0.0/8) this key may be used from; empty: any. The client address is the one TOLLGATE_TRUSTED_PROXIES works out.', validators=[budgets.binding.validate_networks]),
        ),
        migrations.AddField(
            model_name='apikey',
            name='allowed_user_agents',
            field=models.JSONField(blank=True, default=list, help_text='User-Agent prefixes this key may be used by, e.g. claude-cli/ (case-insensitive); empty: any.', validators=[budgets.binding.validate_user_agents]),
        ),
        migrations.AddField(
            model_name='consumer',
            name='allowed_networks',
            field=models.JSONField(blank=True, default=list, help_text='Client networks (CIDRs, IPv4 or IPv6) all its keys may be used from; empty: any.', validators=[budgets.binding.validate_networks]),
        ),
        migrations.AddField(
            model_name='consumer',
            name='allowed_user_agents',
            field=models.JSONField(blank=True, default=list, help_text='User-Agent prefixes (e.g. claude-cli/) all its keys may be used by; empty: any.', validators=[budgets.binding.validate_user_agents]),
        ),
    ]
