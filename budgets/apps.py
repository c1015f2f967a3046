from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Consumers, keys and budgets"

    def ready(self) -> None:
        # signals: connects cache invalidation. tasks: registers the tasks in every process,
        # not only in Celery workers (which autodiscover them), because budgets.alerts queues
        # the alert task by its name, which must resolve in the gateway too.
        from budgets import signals, tasks  # noqa: F401
