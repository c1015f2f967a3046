"""Settings for the test run: the real settings, isolated per test run.

Several test runs may share one machine (developers' parallel runs, CI): each
gets its own database and its own cache key prefix, so none flushes another's.
"""
import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-not-for-production")
os.environ.setdefault("TOLLGATE_AUDIT_CHAIN_KEY", "tests-only-audit-chain-key-not-for-production")
os.environ.setdefault("TOLLGATE_CACHE_PREFIX", f"tgtest{os.getpid()}")
os.environ.setdefault("TOLLGATE_CELERY_QUEUE", f"tgtest{os.getpid()}")

from gateway_site.settings import *  # noqa: F403

_db = DATABASES["default"]  # noqa: F405
if _db["ENGINE"].endswith("sqlite3"):
    _db["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-{os.getpid()}.sqlite3")}  # noqa: F405
    # Each test runs inside a transaction; with BEGIN IMMEDIATE it would hold
    # SQLite's write lock for the whole test and block the end-to-end tests'
    # server processes. Deferred transactions lock only once they write.
    _db["OPTIONS"].pop("transaction_mode", None)
else:
    _db["TEST"] = {"NAME": f"test_tollgate_{os.getpid()}"}

# MD5 instead of PBKDF2's million rounds: each user a test creates would cost a good part of a
# second. The servers that tests start read these settings too, so they check the same hashes.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
