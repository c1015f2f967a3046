"""Every write through the admin REST API goes into the admin's history (django.contrib.admin's LogEntry).

The same rows, in the same change_message format, as the admin writes for its own forms:
`[{"added": {}}]` for an addition, `[{"changed": {"fields": ["Name", ...]}}]` (the fields'
labels, as the admin form shows them) for a change, and a plain sentence for an action such
as a key's revocation. So compliance reads one history, whichever door a change came through
(DESIGN §6). The row and the change commit together.
"""
from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.core.exceptions import FieldDoesNotExist
from django.db import models, transaction
from django.utils.text import capfirst


def history_log(request, obj: models.Model, action_flag: int, message: str | list = "") -> None:
    """One history row: `request.user` did `action_flag` to `obj`."""
    LogEntry.objects.log_actions(user_id=request.user.pk, queryset=[obj], action_flag=action_flag,
                                 change_message=message, single_object=True)


def history_added(request, obj: models.Model, message: str | list | None = None) -> None:
    history_log(request, obj, ADDITION, [{"added": {}}] if message is None else message)


def history_changed(request, obj: models.Model, message: str | list) -> None:
    history_log(request, obj, CHANGE, message)


def _label(serializer, name: str) -> str:
    """The admin form's label of a field: the model field's verbose name, capitalised."""
    source = getattr(serializer.fields.get(name), "source", name) or name
    try:
        return str(capfirst(serializer.Meta.model._meta.get_field(source).verbose_name))
    except (AttributeError, FieldDoesNotExist):  # a serializer-only field: its own name
        return name


def changed_fields(serializer) -> list[str]:
    """Labels of the fields whose validated value differs from the instance's, in the serializer's order."""
    instance = serializer.instance
    changed = []
    for name, value in serializer.validated_data.items():
        source = getattr(serializer.fields.get(name), "source", name) or name
        if getattr(instance, source, None) != value:
            changed.append(_label(serializer, name))
    return changed


class AdminHistoryMixin:
    """For a ModelViewSet: creates, updates and deletes write their LogEntry, in the same transaction."""

    def perform_create(self, serializer) -> None:
        with transaction.atomic():
            super().perform_create(serializer)  # type: ignore[misc]
            history_added(self.request, serializer.instance)  # type: ignore[attr-defined]

    def perform_update(self, serializer) -> None:
        fields = changed_fields(serializer)  # before saving: the instance still has its old values
        with transaction.atomic():
            super().perform_update(serializer)  # type: ignore[misc]
            # As the admin: a save that changed nothing is still recorded, with an empty list.
            history_changed(self.request, serializer.instance,  # type: ignore[attr-defined]
                            [{"changed": {"fields": fields}}] if fields else [])

    def perform_destroy(self, instance) -> None:
        with transaction.atomic():
            # Written first, while the object still has its id and its name.
            history_log(self.request, instance, DELETION)  # type: ignore[attr-defined]
            super().perform_destroy(instance)  # type: ignore[misc]
