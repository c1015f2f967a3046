"""The admin API's shared pieces: one error shape, one pagination, one permission rule (docs/admin.md).

Every error body has `{"error": {"message", "code"}}`. A 400 for bad input also
keeps DRF's per-field lists at the top level (`{"limit": ["..."]}`), and its
message names the field(s): `limit: Ensure this value is greater than or equal to 0.`
"""
from __future__ import annotations

import copy
import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import DjangoModelPermissions
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

logger = logging.getLogger("tollgate.api")


class Pagination(PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class ModelPermissions(DjangoModelPermissions):
    """The admin's permissions (the groups' model permissions), including view_ for reads."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff
                    and super().has_permission(request, view))


def _first_message(value) -> str:
    while isinstance(value, (list, dict)):
        if not value:
            return ""
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
    return str(value)


def _field_summary(data) -> str:
    if isinstance(data, dict):
        parts = []
        for name, value in data.items():
            message = _first_message(value)
            parts.append(message if name in ("non_field_errors", "__all__") else f"{name}: {message}")
        return "; ".join(parts) or "Invalid input."
    return _first_message(data) or "Invalid input."


def api_exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, (ProtectedError, RestrictedError)):
        names = sorted({str(o) for o in exc.protected_objects if o is not None}
                       if isinstance(exc, ProtectedError) else set())[:5]
        message = "It is still in use" + (f" by: {', '.join(names)}" if names else "") + "; remove those first."
        return Response({"error": {"message": message, "code": "protected"}}, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, DataError):
        # A value the request carried that the database cannot use: a NUL in a search or filter
        # (PostgreSQL refuses it in text), a number out of a column's range. The client's, not ours.
        message = (str(exc).splitlines() or [""])[0][:200]
        return Response({"error": {"message": f"A value in the request cannot be used: {message}".strip(),
                                   "code": "invalid"}}, status=status.HTTP_400_BAD_REQUEST)
    elif isinstance(exc, IntegrityError):
        return Response({"error": {"message": f"Conflicts with existing data: {exc}".strip(), "code": "conflict"}},
                        status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, SuspiciousOperation):  # raised outside the parsers (request.POST read directly)
        exc = _refusal(exc)

    # Imported here: rest_framework.views reads DEFAULT_PARSER_CLASSES, which name this module's
    # parsers, so importing it at the top is a circular import whenever DRF's settings load first.
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is None:
        logger.exception("admin API error", exc_info=exc)
        return Response({"error": {"message": "Internal error; it has been logged.", "code": "server_error"}},
                        status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ValidationError):
        data = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        response.data = {"error": {"message": _field_summary(data), "code": "invalid"}, **data}
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else response.data
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = {"error": {"message": str(detail), "code": str(code)}, "detail": str(detail)}
    return response


def _contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


# Django's refusals of a request body it will not parse (DATA_UPLOAD_MAX_NUMBER_FIELDS,
# DATA_UPLOAD_MAX_NUMBER_FILES, DATA_UPLOAD_MAX_MEMORY_SIZE): each a SuspiciousOperation, which
# DRF does not handle, so without this they were 500s (issue #15).
_REFUSALS: tuple[tuple[type[SuspiciousOperation], str, str], ...] = (
    (TooManyFieldsSent, "too_many_fields", "The request has too many fields (at most {fields})."),
    (TooManyFilesSent, "too_many_files", "The request has too many files (at most {files})."),
    (RequestDataTooBig, "request_too_large", "The request body is too large (at most {size} bytes)."),
)


def _refusal(exc: SuspiciousOperation) -> exceptions.ParseError:
    limits = {"fields": settings.DATA_UPLOAD_MAX_NUMBER_FIELDS, "files": settings.DATA_UPLOAD_MAX_NUMBER_FILES,
              "size": settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    for kind, code, message in _REFUSALS:
        if isinstance(exc, kind):
            return exceptions.ParseError(message.format(**limits), code=code)
    return exceptions.ParseError("The request could not be parsed.", code="invalid_request")


class _RefuseNul:
    """Refuse NUL characters in any field: PostgreSQL cannot store them in text,
    so they would otherwise surface as a 500 when the row is saved. And turn Django's
    refusals of an oversized body (too many fields or files, too many bytes) into 400s."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)  # type: ignore[misc]
        except SuspiciousOperation as exc:
            raise _refusal(exc) from None
        fields = getattr(data, "data", data)  # multipart returns DataAndFiles
        if hasattr(fields, "lists"):
            fields = {key: values for key, values in fields.lists()}
        if _contains_nul(fields):
            raise exceptions.ParseError("Strings must not contain NUL (\\u0000) characters.")
        return data


class JSONParser(_RefuseNul, parsers.JSONParser):
    pass


class FormParser(_RefuseNul, parsers.FormParser):
    pass


class MultiPartParser(_RefuseNul, parsers.MultiPartParser):
    pass


class ModelValidationMixin:
    """Run the model's clean() and constraints, so what the database would refuse is a 400, not a 500."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = copy.copy(self.instance) if self.instance is not None else self.Meta.model()
        for name, value in attrs.items():
            setattr(instance, name, value)
        try:
            instance.clean()
            instance.validate_constraints()
        except DjangoValidationError as exc:
            raise exceptions.ValidationError(serializers.as_serializer_error(exc)) from None
        return attrs


def query_int(request, name: str) -> int | None:
    """The query parameter `name` as a whole number (an id), None when absent; a 400 otherwise."""
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if not value.isdigit() or len(value) > 18:
        raise exceptions.ValidationError({name: ["Must be a whole number (an id)."]})
    return int(value)
