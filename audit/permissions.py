"""Who may read the audit log: the `gateway-admin` and `compliance` groups (DESIGN §6)."""
from __future__ import annotations

from django.apps import apps as global_apps
from django.conf import settings
from rest_framework.permissions import BasePermission

GATEWAY_ADMIN = "gateway-admin"
COMPLIANCE = "compliance"
# Holds only the permission to choose providers' credential references and base URLs, which
# gateway-admin lacks: whoever chooses them decides which secret goes where (proxy.credentials).
CREDENTIALS = "gateway-credentials"
CREDENTIALS_PERMISSION = ("proxy", "change_provider_credentials")
AUDIT_READER_GROUPS = (GATEWAY_ADMIN, COMPLIANCE)

# Nobody may add, change or delete these through permissions (the admin refuses anyway).
READ_ONLY_MODELS = ("auditevent", "auditchainhead", "auditexport", "auditsinkcursor")
COMPLIANCE_PERMISSIONS = (
    ("audit", "view_auditevent"),
    ("audit", "export_auditevent"),
    ("audit", "view_auditexport"),
    ("audit", "view_auditsinkcursor"),
    ("admin", "view_logentry"),
)


def groups_ensure(apps=global_apps, using: str = "default") -> None:
    """Create the groups and grant their permissions; safe to run any number of times."""
    from django.contrib.auth.management import create_permissions

    # gateway-admin: everything in the apps the roof names (it wires the apps together; the
    # audit log knows none of them), except changing the audit trail itself.
    admin_apps = tuple(settings.TOLLGATE_GATEWAY_ADMIN_APPS)
    for label in (*admin_apps, "admin"):
        try:
            app_config = apps.get_app_config(label)
        except LookupError:
            continue
        # Inside a migration the app registry holds stubs; create_permissions
        # skips apps without a models module, so say there is one.
        stub = getattr(app_config, "models_module", None) is None
        if stub:
            app_config.models_module = True
        try:
            create_permissions(app_config, verbosity=0, using=using, apps=apps)
        finally:
            if stub:
                app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    admins, _ = Group.objects.using(using).get_or_create(name=GATEWAY_ADMIN)
    compliance, _ = Group.objects.using(using).get_or_create(name=COMPLIANCE)
    admin_perms = [
        p for p in Permission.objects.using(using).filter(content_type__app_label__in=admin_apps)
        .select_related("content_type")
        if not (p.content_type.model in READ_ONLY_MODELS and not p.codename.startswith(("view_", "export_")))
        and (p.content_type.app_label, p.codename) != CREDENTIALS_PERMISSION
    ]
    admins.permissions.add(*admin_perms)
    credentials, _ = Group.objects.using(using).get_or_create(name=CREDENTIALS)
    app_label, codename = CREDENTIALS_PERMISSION
    perm = Permission.objects.using(using).filter(content_type__app_label=app_label, codename=codename).first()
    if perm is not None:
        credentials.permissions.add(perm)
    for app_label, codename in COMPLIANCE_PERMISSIONS:
        perm = Permission.objects.using(using).filter(content_type__app_label=app_label, codename=codename).first()
        if perm is not None:
            compliance.permissions.add(perm)


def is_audit_reader(user) -> bool:
    """Staff in `gateway-admin` or `compliance`, or a superuser."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    return user.is_staff and user.groups.filter(name__in=AUDIT_READER_GROUPS).exists()


class IsAuditReader(BasePermission):
    """Read and export the audit log through the admin API; nothing can be changed there."""

    message = "Reading the audit log needs membership of the 'gateway-admin' or 'compliance' group."

    def has_permission(self, request, view) -> bool:
        return is_audit_reader(request.user)
