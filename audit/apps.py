from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from audit import signals  # noqa: F401  (groups after a flush)
        from audit.redaction import check_configured_patterns

        # A redaction pattern that could stall the audit writer on hostile input is refused at
        # start-up, by every process (gateway, Celery, manage.py), rather than met in production.
        check_configured_patterns()
