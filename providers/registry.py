"""Which provider serves a model id, and the client that calls it.

`<provider>/<model>` routes to the provider of that name (GALLEY_PROVIDERS first, then the
console's registry rows); a bare `claude-*` id goes to the default Anthropic provider
(ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL), as does `anthropic/claude-*` when no provider took the
name "anthropic"."""

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from harness.providers.base import ModelError, Provider
from providers.config import DEFAULT_PROVIDER, ModelConfig, ProviderConfig

LIST_TTL_SECONDS = 60.0


class UnknownModel(ValueError):
    """No configured provider serves this model id (the message lists the choices)."""


@dataclass(frozen=True)
class Route:
    provider: ProviderConfig | None  # None: the default Anthropic provider
    upstream: str  # the id the provider's server is asked for
    model: ModelConfig | None  # its configured prices, window and capabilities, if any

    @property
    def provider_name(self) -> str:
        return self.provider.name if self.provider is not None else DEFAULT_PROVIDER


def env_providers() -> list[ProviderConfig]:
    return list(getattr(settings, "GALLEY_PROVIDERS", []) or [])


def providers_all() -> list[ProviderConfig]:
    """Every configured provider: configuration as code first, then the console's rows."""
    from providers.models import ModelProvider

    configured = env_providers()
    taken = {p.name for p in configured}
    configured.extend(row.config() for row in ModelProvider.objects.all() if row.name not in taken)
    return configured


ROW_TTL_SECONDS = 2.0
_rows: dict[str, tuple[float, ProviderConfig | None]] = {}
_rows_lock = threading.Lock()


def provider_named(name: str) -> ProviderConfig | None:
    for config in env_providers():
        if config.name == name:
            return config
    # A model call asks several times (routing, price, window): read a console row (and decrypt
    # its key) once per couple of seconds; an edit reaches other processes within that.
    now = time.monotonic()
    with _rows_lock:
        cached = _rows.get(name)
    if cached is not None and now - cached[0] < ROW_TTL_SECONDS:
        return cached[1]
    from providers.models import ModelProvider

    row = ModelProvider.objects.filter(name=name).first()
    config = row.config() if row is not None else None
    with _rows_lock:
        _rows[name] = (now, config)
    return config


def route(model_id: str) -> Route:
    """Where a model id goes, without asking any server. Raises UnknownModel."""
    prefix, slash, rest = model_id.partition("/")
    if slash and prefix and rest:
        config = provider_named(prefix)
        if config is not None:
            return Route(config, rest, config.model(rest))
        if prefix == DEFAULT_PROVIDER and rest.startswith("claude-"):
            return Route(None, model_id, None)
        raise UnknownModel(f"no provider is named {prefix!r}")
    if model_id.startswith("claude-"):
        return Route(None, model_id, None)
    raise UnknownModel(f"{model_id!r} names no provider (use <provider>/<model>, or a claude-* model)")


# --- model lists --------------------------------------------------------------------------------------

_lists: dict[tuple[str, str], tuple[float, list[str]]] = {}
_lists_lock = threading.Lock()


def served_models(config: ProviderConfig, *, fresh: bool = False) -> list[str]:
    """The models a provider serves: its configured list, or its server's /models (cached a minute).
    Raises ModelError when the server cannot be asked."""
    if not config.list_models:
        return [m.id for m in config.models]
    key = (config.name, config.version)
    with _lists_lock:
        cached = _lists.get(key)
    if cached is not None and not fresh and time.monotonic() - cached[0] < LIST_TTL_SECONDS:
        return cached[1]
    provider = provider_build(config)
    listing = provider.models_list()  # type: ignore[attr-defined]
    with _lists_lock:
        _lists[key] = (time.monotonic(), listing)
    return listing


def choices() -> list[str]:
    """What a model id may be, for error messages and the console's picker."""
    out = ["claude-* (the default Anthropic provider)"]
    for config in providers_all():
        if config.list_models:
            out.append(f"{config.name}/<any model its /models lists>")
        else:
            out.extend(f"{config.name}/{m.id}" for m in config.models)
    return out


def picker_groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """(provider label, [(model id, label)]) for every configured provider; a server that lists its
    models and cannot be reached shows as an empty group saying so."""
    from providers.config import TYPE_LABELS

    groups: list[tuple[str, list[tuple[str, str]]]] = []
    for config in providers_all():
        label = f"{config.name} ({TYPE_LABELS.get(config.type, config.type)})"
        try:
            served = served_models(config)
        except ModelError:
            groups.append((f"{label}: its /models cannot be listed now", []))
            continue
        groups.append((label, [(f"{config.name}/{m}", m) for m in served]))
    return groups


def model_check(model_id: str) -> None:
    """Raise UnknownModel unless a configured provider serves `model_id` (agents.create/update)."""
    try:
        found = route(model_id)
    except UnknownModel as exc:
        raise UnknownModel(f"{exc}. Available: {', '.join(choices())}") from None
    if found.provider is None:
        return
    try:
        served = served_models(found.provider)
    except ModelError as exc:
        raise UnknownModel(
            f"the models of provider {found.provider.name!r} cannot be listed: {exc.message}"
        ) from None
    if found.upstream not in served:
        listed = ", ".join(f"{found.provider.name}/{m}" for m in served[:50]) or "none"
        raise UnknownModel(
            f"provider {found.provider.name!r} does not serve {found.upstream!r}. It serves: {listed}"
        )


# --- clients ------------------------------------------------------------------------------------------

_clients: dict[str, Provider] = {}
_clients_lock = threading.Lock()


def _fingerprint(config: ProviderConfig) -> str:
    # The key is part of the cache key (a rotated key gets a new client) but only as a digest.
    secret = hashlib.sha256((config.api_key or "").encode()).hexdigest()[:16]
    return f"{config.name}|{config.type}|{config.base_url}|{config.version}|{secret}|{sorted(config.headers)}"


def provider_build(config: ProviderConfig) -> Provider:
    key = _fingerprint(config)
    with _clients_lock:
        cached = _clients.get(key)
    if cached is not None:
        return cached
    provider = _new_provider(config)
    with _clients_lock:
        _clients[key] = provider
    return provider


def _new_provider(config: ProviderConfig) -> Provider:
    from harness.providers.anthropic import AnthropicProvider
    from harness.providers.openai import OpenAIProvider

    timeout = settings.GALLEY_MODEL_TIMEOUT_SECONDS
    missing = f"Provider {config.name!r} has no API key configured: the model cannot be called"
    if config.type == "openai":
        return OpenAIProvider(
            name=config.name,
            base_url=config.base_url,
            api_key=config.api_key,
            headers=config.headers,
            accepts_images=lambda model: _accepts_images(config, model),
        )
    if config.type == "anthropic":
        import anthropic

        client: Any = anthropic.Anthropic(
            api_key=config.api_key or "missing",
            base_url=config.base_url,
            default_headers=config.headers or None,
            max_retries=0,
            timeout=timeout,
        )
    elif config.type == "bedrock":
        from anthropic import AnthropicBedrock

        # A Bedrock API key (bearer token); IAM access keys need botocore, which is not installed.
        client = AnthropicBedrock(
            api_key=config.api_key or "missing",
            aws_region=config.region,
            base_url=config.base_url,
            default_headers=config.headers or None,
            max_retries=0,
            timeout=timeout,
        )
    elif config.type == "vertex":
        from anthropic import AnthropicVertex

        client = AnthropicVertex(
            access_token=config.api_key or "missing",
            region=config.region or "",
            project_id=config.project_id or "",
            base_url=config.base_url,
            default_headers=config.headers or None,
            max_retries=0,
            timeout=timeout,
        )
    else:
        raise ModelError(f"Provider {config.name!r} has an unknown type {config.type!r}")
    return AnthropicProvider(
        api_key=config.api_key, base_url=None, name=config.name, client=client, missing_key=missing
    )


def _accepts_images(config: ProviderConfig, model_id: str) -> bool:
    upstream = model_id.partition("/")[2] or model_id
    found = config.model(upstream)
    return True if found is None else found.images


def provider_for(model_id: str) -> Provider:
    """The provider that runs `model_id`. A model no provider serves (an agent made before it was
    removed) fails the call with a ModelError naming the cause."""
    from harness.providers.anthropic import AnthropicProvider

    try:
        found = route(model_id)
    except UnknownModel as exc:
        return _Unroutable(f"Model {model_id!r} cannot be called: {exc}")
    if found.provider is None:
        return AnthropicProvider.shared()
    return provider_build(found.provider)


class _Unroutable:
    def __init__(self, message: str) -> None:
        self.message = message

    def complete(self, request: Any, *, listener: Any, cancel: Any) -> Any:
        raise ModelError(self.message)


# --- prices and windows ---------------------------------------------------------------------------------


def model_config(model_id: str) -> ModelConfig | None:
    if "/" not in model_id:
        return None
    try:
        return route(model_id).model
    except UnknownModel:
        return None


def reset() -> None:
    """Forget cached clients and model lists (tests, and after the console edits a provider)."""
    with _clients_lock:
        _clients.clear()
    with _lists_lock:
        _lists.clear()
    with _rows_lock:
        _rows.clear()
