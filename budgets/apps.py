from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Consumers, keys and budgets"

    def ready(self) -> None:
        from budgets import signals  # noqa: F401  (connects cache invalidation)
