"""Teams, consumers, keys, budgets and rate limits in the admin REST API (docs/admin.md).

Writes go through the same services as the admin (key_issue, key_revoke, key_rotate);
serializers run the models' own validation, so bad input is a 400 naming the field.
"""
from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from budgets.binding import MAX_ENTRIES, validate_networks, validate_user_agents
from budgets.keys import key_issue, key_revoke, key_rotate
from budgets.models import ApiKey, Budget, Consumer, RateLimit, Team, routes_normalize
from budgets.selectors import budget_usage_report
from gateway_site.lib.api_errors import ModelPermissions, ModelValidationMixin, query_int
from gateway_site.lib.api_history import AdminHistoryMixin, history_added, history_changed

MAX_GRACE_SECONDS = 365 * 86400


# --- Who may use a key (budgets.binding; docs/admin.md#key-binding) -----------------------------


def networks_field() -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=MAX_ENTRIES,
        validators=[validate_networks],
        help_text='Client networks (CIDRs, IPv4 or IPv6, e.g. ["10.0.0.0/8"]) it may be used from; empty: any.')


def user_agents_field() -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=MAX_ENTRIES,
        validators=[validate_user_agents],
        help_text='User-Agent prefixes (e.g. ["claude-cli/"], case-insensitive) it may be used by; empty: any.')


# --- Teams and consumers -------------------------------------------------------------------


class TeamSerializer(ModelValidationMixin, serializers.ModelSerializer):
    members: serializers.PrimaryKeyRelatedField = serializers.PrimaryKeyRelatedField(
        source="consumers", many=True, read_only=True,
        help_text="Its consumers' ids; a consumer joins or leaves with its own `team` field.")

    class Meta:
        model = Team
        fields = ["id", "name", "active", "members", "created_at"]
        read_only_fields = ["created_at"]


class ConsumerSerializer(ModelValidationMixin, serializers.ModelSerializer):
    key_count = serializers.SerializerMethodField()
    allowed_networks = networks_field()
    allowed_user_agents = user_agents_field()

    class Meta:
        model = Consumer
        fields = ["id", "name", "description", "active", "team", "allowed_networks", "allowed_user_agents",
                  "key_count", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def get_key_count(self, consumer: Consumer) -> int:
        count = getattr(consumer, "_key_count", None)
        return consumer.keys.count() if count is None else count


class BudgetUsageSerializer(serializers.Serializer):
    budget_id = serializers.IntegerField()
    owner = serializers.CharField()
    metric = serializers.CharField()
    mode = serializers.CharField()
    period = serializers.CharField()
    timezone = serializers.CharField()
    period_start = serializers.DateField()
    resets_at = serializers.DateTimeField()
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    reserved = serializers.IntegerField()
    remaining = serializers.IntegerField()
    routes = serializers.ListField(child=serializers.CharField(), help_text="Empty: every route.")


class TeamViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Teams: consumers that share budgets. Deleting one deletes its budgets; its consumers stay, in no team."""

    serializer_class = TeamSerializer
    permission_classes = [ModelPermissions]
    queryset = Team.objects.all()

    def get_queryset(self):
        return Team.objects.prefetch_related("consumers").order_by("name")

    @extend_schema(responses=BudgetUsageSerializer(many=True))
    @action(detail=True, methods=["get"])
    def usage(self, request, pk=None):
        """Each budget of the team in the current period: limit, used, reserved, remaining."""
        rows = budget_usage_report(team=self.get_object())
        return Response(BudgetUsageSerializer(rows, many=True).data)


class ConsumerViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Consumers: who calls the gateway. `?search=` filters by name; deleting one deletes its keys and budgets."""

    serializer_class = ConsumerSerializer
    permission_classes = [ModelPermissions]
    queryset = Consumer.objects.all()

    def get_queryset(self):
        consumers = Consumer.objects.annotate(_key_count=Count("keys")).order_by("name")
        search = self.request.query_params.get("search")
        if search:
            consumers = consumers.filter(name__icontains=search)
        team = query_int(self.request, "team")
        if team is not None:
            consumers = consumers.filter(team_id=team)
        return consumers

    @extend_schema(parameters=[OpenApiParameter("search", str, description="Part of the name."),
                               OpenApiParameter("team", int, description="Only this team's members (its id).")])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(responses=BudgetUsageSerializer(many=True))
    @action(detail=True, methods=["get"])
    def usage(self, request, pk=None):
        """Each budget of the consumer, its keys and its team in the current period: limit, used, reserved,
        remaining."""
        rows = budget_usage_report(consumer=self.get_object())
        return Response(BudgetUsageSerializer(rows, many=True).data)


# --- Keys ---------------------------------------------------------------------------------


class ApiKeySerializer(ModelValidationMixin, serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    allowed_routes = serializers.ListField(child=serializers.CharField(max_length=100), required=False,
                                           max_length=1000, help_text="Route names; empty: every route.")
    allowed_networks = networks_field()
    allowed_user_agents = user_agents_field()

    class Meta:
        model = ApiKey
        fields = ["id", "consumer", "name", "prefix", "status", "created_at", "expires_at", "revoked_at",
                  "last_used_at", "allowed_routes", "allowed_networks", "allowed_user_agents"]
        read_only_fields = ["consumer", "prefix", "created_at", "revoked_at", "last_used_at"]


class ApiKeyIssueSerializer(serializers.Serializer):
    consumer = serializers.PrimaryKeyRelatedField(queryset=Consumer.objects.all())
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    expires_in_days = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1,
                                               max_value=36500)
    allowed_routes = serializers.ListField(child=serializers.CharField(max_length=100), required=False,
                                           default=list, max_length=1000)
    allowed_networks = networks_field()
    allowed_user_agents = user_agents_field()

    def validate(self, attrs):
        if attrs.get("expires_at") and attrs.get("expires_in_days"):
            raise ValidationError({"expires_in_days": ["Give expires_at or expires_in_days, not both."]})
        return attrs


class ApiKeyIssuedSerializer(ApiKeySerializer):
    plaintext = serializers.CharField(read_only=True, help_text="The key itself: shown in this answer only.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "plaintext"]


class RotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(min_value=0, max_value=MAX_GRACE_SECONDS, default=86400,
                                             help_text="How long the old key keeps working.")


def _issued_data(issued) -> dict:
    issued.key.plaintext = issued.plaintext
    return ApiKeyIssuedSerializer(issued.key).data


@extend_schema(parameters=[
    OpenApiParameter("consumer", int, description="Only this consumer's keys (its id)."),
    OpenApiParameter("status", str, enum=["active", "expired", "revoked"]),
])
class ApiKeyViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Gateway keys. Issuing one (POST) answers with its plaintext, once; only a digest is kept."""

    serializer_class = ApiKeySerializer
    permission_classes = [ModelPermissions]
    queryset = ApiKey.objects.all()

    def get_queryset(self):
        from django.utils import timezone

        keys = ApiKey.objects.select_related("consumer").order_by("consumer__name", "-created_at", "id")
        consumer = query_int(self.request, "consumer")
        if consumer is not None:
            keys = keys.filter(consumer_id=consumer)
        wanted = self.request.query_params.get("status")
        now = timezone.now()
        if wanted == "revoked":
            keys = keys.filter(revoked_at__isnull=False)
        elif wanted == "expired":
            keys = keys.filter(revoked_at__isnull=True, expires_at__lte=now)
        elif wanted == "active":
            keys = keys.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        elif wanted:
            raise ValidationError({"status": ["Use active, expired or revoked."]})
        return keys

    @extend_schema(request=ApiKeyIssueSerializer, responses={201: ApiKeyIssuedSerializer})
    def create(self, request, *args, **kwargs):
        form = ApiKeyIssueSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        issued = key_issue(**form.validated_data)
        history_added(request, issued.key)
        return Response(_issued_data(issued), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the key now (idempotent)."""
        key = self.get_object()
        if key.revoked_at is None:
            key_revoke(key=key)
            history_changed(request, key, "Revoked.")  # the admin action's words
        return Response(ApiKeySerializer(key).data)

    @extend_schema(request=RotateSerializer, responses={201: inline_serializer("RotatedKey", {
        "key": ApiKeyIssuedSerializer(), "previous": ApiKeySerializer()})})
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        """Issue a successor (plaintext in this answer only); the old key expires after grace_seconds."""
        form = RotateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        key = self.get_object()
        if key.revoked_at is not None:
            raise ValidationError({"key": [f"Key {key.prefix}… is revoked; issue a new key instead."]})
        issued = key_rotate(key=key, grace_seconds=form.validated_data["grace_seconds"])
        key.refresh_from_db()
        history_changed(request, key, f"Rotated: replaced by {issued.key.prefix}…, expires {key.expires_at}.")
        history_added(request, issued.key, f"Issued by rotating {key.prefix}….")
        return Response({"key": _issued_data(issued), "previous": ApiKeySerializer(key).data},
                        status=status.HTTP_201_CREATED)


# --- Budgets and rate limits --------------------------------------------------------------


class BudgetSerializer(ModelValidationMixin, serializers.ModelSerializer):
    routes = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=1000,
        help_text='Route names (models) it counts and limits, e.g. ["opus"]; empty: every route.')

    class Meta:
        model = Budget
        fields = ["id", "team", "consumer", "key", "metric", "limit", "period", "timezone", "mode", "routes",
                  "alert_at_percent", "alert_email", "alert_webhook", "enabled", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate_routes(self, routes: list[str]) -> list[str]:
        return routes_normalize(routes)


class RateLimitSerializer(ModelValidationMixin, serializers.ModelSerializer):
    class Meta:
        model = RateLimit
        fields = ["id", "consumer", "key", "requests", "tokens", "window_seconds", "rejected_code", "rejected_msg",
                  "enabled"]


_OWNER_FILTERS = [
    OpenApiParameter("consumer", int, description="Only this consumer's (its id)."),
    OpenApiParameter("key", int, description="Only this key's (its id)."),
]


class _OwnedViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    permission_classes = [ModelPermissions]
    owners: tuple[str, ...] = ("consumer", "key")

    def get_queryset(self):
        rows = self.queryset.select_related(*self.owners, "key__consumer").order_by("id")
        for name in self.owners:
            value = query_int(self.request, name)
            if value is not None:
                rows = rows.filter(**{f"{name}_id": value})
        return rows


@extend_schema(parameters=[*_OWNER_FILTERS, OpenApiParameter("team", int, description="Only this team's (its id).")])
class BudgetViewSet(_OwnedViewSet):
    """Budgets: tokens, requests or cost (micro-dollars) per day, week or month, of a team, a consumer or one
    key, on every route or only on `routes`."""

    serializer_class = BudgetSerializer
    queryset = Budget.objects.all()
    owners = ("team", "consumer", "key")


@extend_schema(parameters=_OWNER_FILTERS)
class RateLimitViewSet(_OwnedViewSet):
    """Rate limits: requests or tokens per window of seconds, of a consumer or one key."""

    serializer_class = RateLimitSerializer
    queryset = RateLimit.objects.all()
