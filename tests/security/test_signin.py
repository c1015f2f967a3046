"""Admin sign-in: lockout per (user, address) with django-axes, and the TOTP second factor (issue #17)."""
from __future__ import annotations

import hashlib
import hmac
import struct
import time
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

pytestmark = pytest.mark.django_db
LIMIT = 5


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def gwen(django_user_model):
    user = django_user_model.objects.create_user("gwen", password="gwen-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="gateway-admin"))
    return user


def sign_in(username: str, password: str, address: str = "198.51.100.7", otp: str = "", **headers):
    client = Client(REMOTE_ADDR=address, **headers)
    response = client.post("/admin/login/?next=/admin/", {"username": username, "password": password,
                                                          "otp_token": otp, "next": "/admin/"})
    return client, response


def signed_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


# --- Lockout ------------------------------------------------------------------------------


def test_five_failures_lock_that_user_at_that_address_only(gwen, personas):
    for attempt in range(1, LIMIT + 1):
        _, response = sign_in("gwen", "wrong", "198.51.100.7")
        assert response.status_code == (429 if attempt == LIMIT else 200), attempt
    _, response = sign_in("gwen", "gwen-password-1", "198.51.100.7")
    assert response.status_code == 429  # the right password does not help from there
    # A stranger cannot lock gwen out: from her own address she still signs in ...
    assert signed_in(sign_in("gwen", "gwen-password-1", "203.0.113.20")[1])
    # ... and nobody else is locked out of the stranger's address.
    assert signed_in(sign_in("ada", "ada-password-1", "198.51.100.7")[1])


def test_the_lock_ends_after_the_cool_off(gwen, settings):
    for _ in range(LIMIT):
        sign_in("gwen", "wrong")
    assert sign_in("gwen", "gwen-password-1")[1].status_code == 429
    with time_machine.travel(timezone.now() + timedelta(minutes=16), tick=False):
        assert signed_in(sign_in("gwen", "gwen-password-1")[1])


def test_a_forged_forwarded_for_does_not_escape_the_lock(gwen):
    """Without trusted proxies X-Forwarded-For is the client's own words: ignored."""
    for n in range(LIMIT):
        sign_in("gwen", "wrong", "198.51.100.7", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    _, response = sign_in("gwen", "gwen-password-1", "198.51.100.7", HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert response.status_code == 429


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(gwen, settings):
    settings.TOLLGATE_TRUSTED_PROXIES = ["10.0.0.0/8"]
    for _ in range(LIMIT):
        sign_in("gwen", "wrong", "10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.7")
    assert sign_in("gwen", "gwen-password-1", "10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.7")[1].status_code == 429
    # Everyone else arrives from the same proxy, and is not locked.
    assert signed_in(sign_in("gwen", "gwen-password-1", "10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.20")[1])


# --- TOTP -----------------------------------------------------------------------------------


def totp_now(device: TOTPDevice, offset: int = 0) -> str:
    """RFC 6238 from the device's key, computed here (not by django-otp): HMAC-SHA1, 30 s steps, 6 digits."""
    counter = (int(time.time()) - device.t0) // device.step + offset
    mac = hmac.new(bytes.fromhex(device.key), struct.pack(">Q", counter), hashlib.sha1).digest()
    start = mac[-1] & 0x0F
    number = (struct.unpack(">I", mac[start:start + 4])[0] & 0x7FFFFFFF) % 10 ** device.digits
    return f"{number:0{device.digits}d}"


def test_required_totp_blocks_a_superuser_without_a_device(personas, settings):
    settings.TOLLGATE_ADMIN_OTP = "required"
    client, response = sign_in("ada", "ada-password-1")
    assert response.status_code == 200 and "needs a confirmed authenticator" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_required_totp_admits_a_superuser_with_the_right_code(personas, settings):
    settings.TOLLGATE_ADMIN_OTP = "required"
    device = TOTPDevice.objects.create(user=personas.admin, name="phone", confirmed=True)
    client, response = sign_in("ada", "ada-password-1")  # no code
    assert response.status_code == 200 and "Enter the code" in response.content.decode()
    client, response = sign_in("ada", "ada-password-1", otp=totp_now(device, offset=-3))  # a stale code
    assert response.status_code == 200 and "not right" in response.content.decode()
    device.refresh_from_db()
    device.throttling_failure_count, device.throttling_failure_timestamp = 0, None  # django-otp's back-off
    device.save()
    client, response = sign_in("ada", "ada-password-1", otp=totp_now(device))
    assert signed_in(response)
    assert client.get("/admin/").status_code == 200


def test_required_totp_leaves_other_staff_to_their_password(gwen, settings):
    settings.TOLLGATE_ADMIN_OTP = "required"
    assert signed_in(sign_in("gwen", "gwen-password-1")[1])


def test_a_superuser_session_without_totp_is_refused_once_required(personas, settings):
    settings.TOLLGATE_ADMIN_OTP = "required"
    client = Client()
    client.force_login(personas.admin)  # as a session opened before the rule, or by another path
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_nor_can_that_session_use_the_admin_api(personas, settings):
    settings.TOLLGATE_ADMIN_OTP = "required"
    client = Client()
    client.force_login(personas.admin)
    assert client.get("/api/admin/consumers/").status_code == 401
    settings.TOLLGATE_ADMIN_OTP = "off"
    assert client.get("/api/admin/consumers/").status_code == 200


def test_optional_totp_asks_only_who_has_a_device(gwen, personas, settings):
    settings.TOLLGATE_ADMIN_OTP = "optional"
    assert signed_in(sign_in("ada", "ada-password-1")[1])
    device = TOTPDevice.objects.create(user=gwen, name="phone", confirmed=True)
    assert sign_in("gwen", "gwen-password-1")[1].status_code == 200
    assert signed_in(sign_in("gwen", "gwen-password-1", otp=totp_now(device))[1])


def test_wrong_codes_count_towards_the_lockout(personas, settings):
    settings.TOLLGATE_ADMIN_OTP = "required"
    TOTPDevice.objects.create(user=personas.admin, name="phone", confirmed=True)
    statuses = [sign_in("ada", "ada-password-1", otp="000000")[1].status_code for _ in range(LIMIT + 1)]
    assert statuses[-1] == 429


def test_off_shows_no_code_field(personas):
    page = Client().get("/admin/login/").content.decode()
    assert 'name="otp_token"' not in page and 'name="password"' in page
