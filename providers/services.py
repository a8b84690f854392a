"""Provider registry workflows: console rows (create, update, delete), the connection test, and the
ledger of priced model calls."""

import threading
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from galley.prepared import rows_insert
from harness.providers.base import ModelError, ModelRequest, ModelUsage
from providers import registry
from providers.config import (
    DEFAULT_PROVIDER,
    TYPES,
    ProviderConfigError,
    headers_parse,
    models_parse,
    name_check,
)
from providers.models import ModelCall, ModelProvider


def model_require(*, model_id: str, field: str) -> None:
    """A model id no configured provider serves is refused (400 naming the field and the choices)
    when an agent or session names it, not discovered mid-session."""
    from api.errors import bad_request

    try:
        registry.model_check(model_id)
    except registry.UnknownModel as exc:
        raise bad_request(f"{field}: {model_id!r} is not served by any configured provider: {exc}") from None


def model_call_record(
    *,
    session_id: str,
    model: str,
    usage: ModelUsage,
    cost_micros: int,
    thread_id: str = "",
    agent_name: str = "",
) -> None:
    prefix, slash, _rest = model.partition("/")
    call = ModelCall(
        session_id=session_id,
        thread_id=thread_id,
        agent_name=agent_name,
        provider=prefix if slash else DEFAULT_PROVIDER,
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cost_micros=cost_micros,
    )
    rows_insert([call])  # in the harness's answer transaction: no ORM compile per call


def _clean(data: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Validated row fields from a form's data; raises ProviderConfigError naming the field."""
    out: dict[str, Any] = {}
    if creating:
        name = name_check((data.get("name") or "").strip())
        if name == DEFAULT_PROVIDER:
            raise ProviderConfigError(
                "name: 'anthropic' is the default Anthropic provider; choose another name"
            )
        if any(p.name == name for p in registry.env_providers()):
            raise ProviderConfigError(f"name: {name!r} is configured in GALLEY_PROVIDERS")
        if ModelProvider.objects.filter(name=name).exists():
            raise ProviderConfigError(f"name: a provider named {name!r} exists")
        out["name"] = name
    kind = data.get("type")
    if kind not in TYPES:
        raise ProviderConfigError(f"type: must be one of {', '.join(TYPES)}")
    out["type"] = kind
    base_url = (data.get("base_url") or "").strip()
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ProviderConfigError("base_url: must be an http(s) URL")
    if kind == "openai" and not base_url:
        base_url = "https://api.openai.com/v1"
    out["base_url"] = base_url
    out["region"] = (data.get("region") or "").strip()
    out["project_id"] = (data.get("project_id") or "").strip()
    if kind == "bedrock" and not out["region"]:
        raise ProviderConfigError("region: a Bedrock provider needs its AWS region")
    if kind == "vertex" and not (out["region"] and out["project_id"]):
        raise ProviderConfigError("region: a Vertex provider needs its region and project_id")
    list_models = bool(data.get("list_models"))
    if list_models and kind != "openai":
        raise ProviderConfigError("list_models: only OpenAI-compatible servers are asked for their /models")
    models, _ = models_parse(data.get("models") or [], "models")
    if not models and not list_models:
        raise ProviderConfigError("models: list the models it serves, or choose to list them from the server")
    out["list_models"] = list_models
    out["served_models"] = [m.wire() for m in models]
    return out


def provider_create(*, data: dict[str, Any]) -> ModelProvider:
    from vaults import crypto

    fields = _clean(data, creating=True)
    headers = headers_parse(data.get("headers") or {}, "headers")
    key = (data.get("api_key") or "").strip()
    row = ModelProvider(
        **fields,
        api_key_encrypted=crypto.encrypt({"key": key}) if key else "",
        headers_encrypted=crypto.encrypt(headers) if headers else "",
        header_names=sorted(headers),
    )
    row.save()
    registry.reset()
    return row


def provider_update(*, provider: ModelProvider, data: dict[str, Any]) -> ModelProvider:
    """Update a row. An empty api_key or headers keeps the stored one (it is never shown back);
    `clear_api_key` removes the key."""
    from vaults import crypto

    fields = _clean(data, creating=False)
    for name, value in fields.items():
        setattr(provider, name, value)
    key = (data.get("api_key") or "").strip()
    if key:
        provider.api_key_encrypted = crypto.encrypt({"key": key})
    elif data.get("clear_api_key"):
        provider.api_key_encrypted = ""
    if data.get("headers"):
        headers = headers_parse(data["headers"], "headers")
        provider.headers_encrypted = crypto.encrypt(headers)
        provider.header_names = sorted(headers)
    elif data.get("clear_headers"):
        provider.headers_encrypted = ""
        provider.header_names = []
    provider.save()
    registry.reset()
    return provider


def provider_delete(*, provider: ModelProvider) -> None:
    with transaction.atomic():
        provider.delete()
    registry.reset()


@dataclass
class ConnectionResult:
    ok: bool
    message: str


class _Silent:
    def block_start(self, index: int, block_type: str) -> None:
        return None

    def text_delta(self, index: int, text: str) -> None:
        return None


def provider_test(*, name: str, model: str | None = None) -> ConnectionResult:
    """One tiny call: list the server's models where it is asked for them, else a one-token
    completion of its first (or the given) model. Shows the provider's own error on failure."""
    config = registry.provider_named(name)
    if config is None:
        return ConnectionResult(False, f"No provider is named {name!r}.")
    try:
        if config.list_models:
            listing = registry.served_models(config, fresh=True)
            shown = ", ".join(listing[:20]) + (" ..." if len(listing) > 20 else "")
            return ConnectionResult(
                True, f"Connected: the server lists {len(listing)} model(s): {shown or 'none'}."
            )
        upstream = model or (config.models[0].id if config.models else "")
        request = ModelRequest(
            model=f"{config.name}/{upstream}",
            system=None,
            tools=[],
            messages=[{"role": "user", "content": [{"type": "text", "text": "Reply with OK."}]}],
            max_tokens=5,
        )
        answer = registry.provider_build(config).complete(
            request, listener=_Silent(), cancel=threading.Event()
        )
    except ModelError as exc:
        return ConnectionResult(False, exc.message)
    said = " ".join(b.get("text", "") for b in answer.blocks if b.get("type") == "text").strip()
    return ConnectionResult(
        True,
        f"Connected: {upstream} answered {said[:80]!r} "
        f"({answer.usage.prompt_tokens} input, {answer.usage.output_tokens} output tokens).",
    )
