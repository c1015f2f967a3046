"""Settings for the test run: the real settings, with a throwaway secret key if none is set."""
import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-not-for-production")

from gateway_site.settings import *  # noqa: F403
