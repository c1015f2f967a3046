"""The request object of the proxy paths, built straight from the ASGI scope.

Django's ASGIRequest copies every header into META (upper-cased, prefixed, joined),
works out the script prefix and the content type, and its `headers` then builds a
second case-insensitive mapping from META: work a proxied request pays for on every
call and mostly never reads. The proxy views read the method, the path, a few
headers, the query string (Google's `?key=`), the body, and META's REMOTE_ADDR and
X-Forwarded-For (gateway_site/lib/clientaddr.py). `LeanRequest` has exactly that,
each part built when first read; it is an HttpRequest, so the views, decorators and
tests that take one take it too.

As in Django, a header whose name has an underscore is dropped (X_Forwarded_For must
not pass for X-Forwarded-For), and repeated headers are joined with commas.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import Any

from django.http import HttpRequest, QueryDict


class LeanHeaders(dict[str, str]):
    """Request headers by lower-case name; looked up in any case, as Django's request.headers."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        super().__init__()
        for name_bytes, value_bytes in raw:
            name = name_bytes.decode("latin1").lower()
            if "_" in name:
                continue
            value = value_bytes.decode("latin1")
            previous = dict.get(self, name)
            dict.__setitem__(self, name, value if previous is None else f"{previous},{value}")

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class LeanRequest(HttpRequest):
    """What the proxy views read of a request (see the module's docstring); `body` is already read."""

    def __init__(self, scope: dict[str, Any], body: bytes = b"") -> None:
        # HttpRequest.__init__ is not called: it would build the empty GET/POST/COOKIES/META it sets.
        self.scope = scope
        self.path = self.path_info = scope["path"]
        self.method = scope["method"]
        self.resolver_match = None
        self._body = body
        self._read_started = False
        self.content_type = None
        self.content_params = None
        self.POST = QueryDict()
        self.COOKIES = {}
        self.FILES = {}  # type: ignore[assignment]

    @cached_property
    def headers(self) -> LeanHeaders:  # type: ignore[override]
        return LeanHeaders(self.scope["headers"])

    @cached_property
    def META(self) -> dict[str, Any]:  # type: ignore[override]
        """The client's and the server's addresses and the forwarding and host headers, named as
        Django names them (what gateway_site.lib.clientaddr and Django's get_host read)."""
        scope = self.scope
        meta: dict[str, Any] = {"REQUEST_METHOD": self.method, "PATH_INFO": self.path, "SCRIPT_NAME": ""}
        client = scope.get("client")
        if client:
            meta["REMOTE_ADDR"] = client[0]
        server = scope.get("server")
        meta["SERVER_NAME"], meta["SERVER_PORT"] = (server[0], str(server[1])) if server else ("unknown", "0")
        for name in ("x-forwarded-for", "host"):
            value = self.headers.get(name)
            if value is not None:
                meta["HTTP_" + name.upper().replace("-", "_")] = value
        return meta

    @cached_property
    def GET(self) -> QueryDict:  # type: ignore[override]
        query = self.scope.get("query_string", b"")
        return QueryDict(query.decode() if isinstance(query, bytes) else query)

    def _get_scheme(self) -> str:
        return self.scope.get("scheme") or "http"
