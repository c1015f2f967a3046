from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Providers and routes"

    def ready(self) -> None:
        from proxy import signals  # noqa: F401  (connects cache invalidation)
