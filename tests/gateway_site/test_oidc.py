"""Single sign-on: the Django test client follows the whole OpenID Connect flow against a real (small)
identity provider on 127.0.0.1, with RS256 id_tokens signed by a key made here; nothing of
mozilla-django-oidc is mocked."""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db
CLIENT_ID, CLIENT_SECRET = "tollgate-admin", "s3cret-of-the-client"


@functools.cache
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class IdentityProvider:
    """Discovery, authorize (redirects back with a code), token (checks secret and PKCE), JWKS, userinfo."""

    def __init__(self) -> None:
        self.key = signing_key()
        self.person: dict = {}
        self.audience = CLIENT_ID
        self.codes: dict[str, dict] = {}
        self.access: dict[str, dict] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _handler(self):
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                params = {k: v[0] for k, v in parse_qs(query).items()}
                if path == "/.well-known/openid-configuration":
                    self._send(200, {"issuer": idp.url, "authorization_endpoint": f"{idp.url}/authorize",
                                     "token_endpoint": f"{idp.url}/token", "userinfo_endpoint": f"{idp.url}/userinfo",
                                     "jwks_uri": f"{idp.url}/jwks"})
                elif path == "/authorize":
                    assert params["client_id"] == CLIENT_ID and params["code_challenge_method"] == "S256"
                    code = secrets.token_urlsafe(16)
                    idp.codes[code] = params
                    self._send(302, headers={"Location": f"{params['redirect_uri']}?"
                                             + urlencode({"code": code, "state": params["state"]})})
                elif path == "/jwks":
                    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(idp.key.public_key(), as_dict=True)
                    self._send(200, {"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})
                elif path == "/userinfo":
                    token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    if token not in idp.access:
                        self._send(401, {"error": "invalid_token"})
                    else:
                        self._send(200, idp.access[token])
                else:
                    self._send(404, {})

            def do_POST(self) -> None:
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"]))
                                                     .decode()).items()}
                grant = idp.codes.pop(form.get("code", ""), None)
                challenge = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode())
                                                     .digest()).rstrip(b"=").decode()
                if (self.path != "/token" or grant is None or form.get("client_secret") != CLIENT_SECRET
                        or form.get("redirect_uri") != grant["redirect_uri"] or challenge != grant["code_challenge"]):
                    self._send(400, {"error": "invalid_grant"})
                    return
                access = secrets.token_urlsafe(16)
                idp.access[access] = {"sub": idp.person["email"], "email_verified": True, **idp.person}
                now = int(time.time())
                id_token = jwt.encode({"iss": idp.url, "sub": idp.person["email"], "aud": idp.audience,
                                       "iat": now, "exp": now + 300, "nonce": grant["nonce"],
                                       "email": idp.person["email"]},
                                      idp.key, algorithm="RS256", headers={"kid": "k1"})
                self._send(200, {"access_token": access, "token_type": "Bearer", "id_token": id_token})

        return Handler


@pytest.fixture
def idp(settings) -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    thread = threading.Thread(target=provider.server.serve_forever, daemon=True)
    thread.start()
    settings.TOLLGATE_OIDC_ENABLED = True
    settings.TOLLGATE_OIDC_ISSUER = provider.url  # the endpoints come from its discovery document
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    settings.TOLLGATE_OIDC_PROVIDER_NAME = "Example ID"
    settings.TOLLGATE_OIDC_ADMIN_GROUPS = ["gw-admins"]
    settings.TOLLGATE_OIDC_COMPLIANCE_GROUPS = ["auditors", "risk"]
    settings.AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "gateway_site.auth_oidc.OIDCBackend",
                                        "django.contrib.auth.backends.ModelBackend"]
    try:
        yield provider
    finally:
        provider.server.shutdown()
        provider.server.server_close()
        thread.join(timeout=5)


def sso_sign_in(idp: IdentityProvider, person: dict, client: Client | None = None):
    """Browser steps: Tollgate → the IdP's authorize URL → back to the callback with code and state."""
    idp.person = person
    client = client or Client()
    start = client.get("/oidc/authenticate/", {"next": "/admin/"})
    assert start.status_code == 302 and start["Location"].startswith(f"{idp.url}/authorize?")
    at_idp = httpx.get(start["Location"], follow_redirects=False)
    assert at_idp.status_code == 302
    callback = urlsplit(at_idp.headers["Location"])
    assert callback.path == "/oidc/callback/"
    return client, client.get(f"{callback.path}?{callback.query}")


def test_the_login_page_offers_single_sign_on(idp):
    page = Client().get("/admin/login/?next=/admin/").content.decode()
    assert "Sign in with Example ID" in page and 'href="/oidc/authenticate/?next=%2Fadmin%2F"' in page


def test_the_admin_group_makes_a_gateway_admin(idp):
    client, response = sso_sign_in(idp, {"email": "Grace@Example.com", "groups": ["gw-admins", "everyone"]})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    user = get_user_model().objects.get(email__iexact="grace@example.com")
    assert user.username == "grace@example.com"
    assert user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == ["gateway-admin"]
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/budgets/consumer/add/").status_code == 200
    entry = LogEntry.objects.get(object_id=str(user.pk))  # what single sign-on changed is in the history
    assert json.loads(entry.change_message) == [{"changed": {"fields": ["Groups", "Staff status"]}}]


def test_a_deactivated_users_session_ends(idp):
    client, _ = sso_sign_in(idp, {"email": "grace@example.com", "groups": ["gw-admins"]})
    get_user_model().objects.filter(email="grace@example.com").update(is_active=False)
    response = client.get("/admin/")
    assert response.status_code == 302 and not response.wsgi_request.user.is_authenticated


def test_the_compliance_group_reads_the_audit_log_and_changes_nothing(idp):
    client, _ = sso_sign_in(idp, {"email": "cora@example.com", "groups": ["risk"]})
    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.get("/admin/budgets/consumer/add/").status_code == 403


def test_someone_in_no_mapped_group_is_refused_and_not_created(idp):
    client, response = sso_sign_in(idp, {"email": "eve@example.com", "groups": ["everyone"]})
    assert response["Location"] == "/admin/login/?sso=failed"
    assert not get_user_model().objects.filter(email="eve@example.com").exists()
    assert "Single sign-on did not sign you in" in client.get(response["Location"]).content.decode()


def test_failed_single_sign_ons_lock_nobody_out(idp):
    """They carry no user name: counted, they would lock every SSO user behind one office address."""
    for n in range(6):
        _, response = sso_sign_in(idp, {"email": f"outsider{n}@example.com", "groups": []})
        assert response["Location"] == "/admin/login/?sso=failed"
    _, response = sso_sign_in(idp, {"email": "grace@example.com", "groups": ["gw-admins"]})
    assert response["Location"] == "/admin/"


def test_leaving_the_group_at_the_provider_removes_the_access(idp):
    sso_sign_in(idp, {"email": "grace@example.com", "groups": ["gw-admins"]})
    _, response = sso_sign_in(idp, {"email": "grace@example.com", "groups": []})
    assert response["Location"] == "/admin/login/?sso=failed"
    user = get_user_model().objects.get(email="grace@example.com")
    assert not user.is_staff and not user.groups.exists()


def test_single_sign_on_never_makes_or_admits_a_superuser_by_default(idp, personas):
    _, response = sso_sign_in(idp, {"email": "ada@example.com", "groups": ["gw-admins"]})  # the local superuser
    assert response["Location"] == "/admin/login/?sso=failed"
    personas.admin.refresh_from_db()
    assert personas.admin.is_superuser


def test_superuser_groups_grant_superuser_and_count_as_a_second_factor(idp, settings):
    settings.TOLLGATE_OIDC_SUPERUSER_GROUPS = ["gw-root"]
    settings.TOLLGATE_ADMIN_OTP = "required"  # the identity provider runs its own checks
    client, response = sso_sign_in(idp, {"email": "root@example.com", "groups": ["gw-root"]})
    assert response["Location"] == "/admin/"
    assert get_user_model().objects.get(email="root@example.com").is_superuser
    assert client.get("/admin/").status_code == 200


def test_an_id_token_for_another_client_is_refused(idp):
    idp.audience = "some-other-app"
    _, response = sso_sign_in(idp, {"email": "grace@example.com", "groups": ["gw-admins"]})
    assert response["Location"] == "/admin/login/?sso=failed"


def test_password_sign_in_can_be_turned_off(idp, settings, personas):
    settings.TOLLGATE_ADMIN_PASSWORD_LOGIN = False
    settings.AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "gateway_site.auth_oidc.OIDCBackend"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = Client()
    page = client.get("/admin/login/").content.decode()
    assert "Sign in with Example ID" in page and 'name="password"' not in page
    response = client.post("/admin/login/", {"username": "ada", "password": "ada-password-1", "next": "/admin/"})
    assert response.status_code == 200 and "_auth_user_id" not in client.session


def test_off_by_default(settings):
    assert not settings.TOLLGATE_OIDC_ENABLED
    assert Client().get("/oidc/authenticate/").status_code == 404
    assert "Sign in with" not in Client().get("/admin/login/").content.decode()
