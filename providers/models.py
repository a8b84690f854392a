from typing import Any

from django.db import models

from providers.config import TYPE_LABELS, ModelConfig, ProviderConfig, model_parse


class ModelProvider(models.Model):
    """A provider added in the console. Its API key is stored encrypted with the vault keys and
    is never shown again (the console shows only whether one is set)."""

    name = models.CharField(max_length=63, unique=True)
    type = models.CharField(max_length=16, choices=list(TYPE_LABELS.items()))
    base_url = models.CharField(max_length=500, blank=True, default="")
    api_key_encrypted = models.TextField(blank=True, default="")
    headers_encrypted = models.TextField(blank=True, default="")  # headers may carry credentials too
    header_names = models.JSONField(default=list)  # what the console may show of them
    list_models = models.BooleanField(default=False)
    served_models = models.JSONField(
        default=list
    )  # [{id, input_price, output_price, context_window, images}]
    region = models.CharField(max_length=64, blank=True, default="")
    project_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def model_configs(self) -> tuple[ModelConfig, ...]:
        return tuple(model_parse(item, f"{self.name}.models") for item in self.served_models or [])

    def config(self) -> ProviderConfig:
        from vaults import crypto

        api_key = crypto.decrypt(self.api_key_encrypted)["key"] if self.api_key_encrypted else None
        headers: dict[str, Any] = crypto.decrypt(self.headers_encrypted) if self.headers_encrypted else {}
        return ProviderConfig(
            name=self.name,
            type=self.type,
            base_url=self.base_url or None,
            api_key=api_key,
            headers={str(k): str(v) for k, v in headers.items()},
            models=self.model_configs(),
            list_models=self.list_models,
            region=self.region or None,
            project_id=self.project_id or None,
            source="console",
            version=self.updated_at.isoformat() if self.updated_at else "",
        )


class ModelCall(models.Model):
    """One priced model call: the ledger behind cost per provider, model and agent (a session's
    roster members may each run on their own model)."""

    session = models.ForeignKey(
        "agent_sessions.Session", on_delete=models.CASCADE, related_name="model_calls"
    )
    thread_id = models.CharField(max_length=64, blank=True, default="")
    agent_name = models.CharField(max_length=256, blank=True, default="")
    provider = models.CharField(max_length=63)
    model = models.CharField(max_length=256)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cache_creation_input_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["session", "created_at"])]
