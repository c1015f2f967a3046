"""WSGI entry point, for management tooling only: the proxy views need ASGI."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
application = get_wsgi_application()
