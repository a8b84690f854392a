"""Provider configuration values, shared by GALLEY_PROVIDERS (configuration as code) and the
console's registry rows. Pure parsing: settings import this before Django is ready."""

import json
import re
from dataclasses import dataclass, field
from typing import Any

TYPES = ("openai", "anthropic", "bedrock", "vertex")
TYPE_LABELS = {
    "openai": "OpenAI-compatible (Chat Completions)",
    "anthropic": "Anthropic Messages API",
    "bedrock": "Claude on Amazon Bedrock",
    "vertex": "Claude on Google Vertex AI",
}
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_PROVIDER = "anthropic"  # bare claude-* ids (ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL)


class ProviderConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    id: str
    input_price: float | None = None  # USD per million tokens
    output_price: float | None = None
    context_window: int | None = None
    images: bool = True  # the model accepts images (tool results, user messages)

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input_price": self.input_price,
            "output_price": self.output_price,
            "context_window": self.context_window,
            "images": self.images,
        }


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    models: tuple[ModelConfig, ...] = ()
    list_models: bool = False
    region: str | None = None  # bedrock, vertex
    project_id: str | None = None  # vertex
    source: str = "env"  # "env" (GALLEY_PROVIDERS) or "console" (a registry row)
    version: str = ""  # changes when the row changes (client cache key)

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)


def _number(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ProviderConfigError(f"{where}: must be a non-negative number")
    return float(value)


def model_parse(value: Any, where: str) -> ModelConfig:
    if isinstance(value, str):
        value = {"id": value}
    if not isinstance(value, dict):
        raise ProviderConfigError(f"{where}: must be a model id or an object with an id")
    unknown = set(value) - {"id", "input_price", "output_price", "context_window", "images"}
    if unknown:
        raise ProviderConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    model_id = value.get("id")
    if not isinstance(model_id, str) or not model_id.strip() or len(model_id) > 200:
        raise ProviderConfigError(f"{where}.id: must be a non-empty string")
    window = value.get("context_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1000):
        raise ProviderConfigError(f"{where}.context_window: must be an integer of at least 1000")
    images = value.get("images", True)
    if not isinstance(images, bool):
        raise ProviderConfigError(f"{where}.images: must be true or false")
    return ModelConfig(
        id=model_id.strip(),
        input_price=_number(value.get("input_price"), f"{where}.input_price"),
        output_price=_number(value.get("output_price"), f"{where}.output_price"),
        context_window=window,
        images=images,
    )


def models_parse(value: Any, where: str) -> tuple[tuple[ModelConfig, ...], bool]:
    """`"list"` (ask the server's /models) or a list of ids / model objects."""
    if value == "list":
        return (), True
    if not isinstance(value, list):
        raise ProviderConfigError(f'{where}: must be a list of models or "list"')
    models = tuple(model_parse(item, f"{where}[{i}]") for i, item in enumerate(value))
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ProviderConfigError(f"{where}: lists a model twice")
    return models, False


def name_check(name: Any, where: str = "name") -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ProviderConfigError(
            f"{where}: must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


def headers_parse(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip() for k, v in value.items()
    ):
        raise ProviderConfigError(f"{where}: must be an object of header names to string values")
    return dict(value)


def providers_parse(raw: str | None, environ: dict[str, str]) -> list[ProviderConfig]:
    """GALLEY_PROVIDERS: a JSON list of {name, type, base_url, api_key_env, models, headers,
    region, project_id}. Keys are read from the variables `api_key_env` names, never inlined."""
    if not raw or not raw.strip():
        return []
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise ProviderConfigError(f"GALLEY_PROVIDERS is not valid JSON: {exc}") from None
    if not isinstance(given, list):
        raise ProviderConfigError("GALLEY_PROVIDERS must be a JSON list of provider objects")
    out: list[ProviderConfig] = []
    seen = {DEFAULT_PROVIDER}
    allowed = {"name", "type", "base_url", "api_key_env", "models", "headers", "region", "project_id"}
    for i, item in enumerate(given):
        where = f"GALLEY_PROVIDERS[{i}]"
        if not isinstance(item, dict):
            raise ProviderConfigError(f"{where}: must be an object")
        unknown = set(item) - allowed
        if unknown:
            hint = " (put the key in a variable named by api_key_env)" if "api_key" in unknown else ""
            raise ProviderConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}{hint}")
        name = name_check(item.get("name"), f"{where}.name")
        if name in seen:
            raise ProviderConfigError(f"{where}.name: {name!r} is taken")
        seen.add(name)
        kind = item.get("type")
        if kind not in TYPES:
            raise ProviderConfigError(f"{where}.type: must be one of {', '.join(TYPES)}, got {kind!r}")
        base_url = item.get("base_url")
        if base_url is not None and (
            not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))
        ):
            raise ProviderConfigError(f"{where}.base_url: must be an http(s) URL")
        if kind == "openai" and not base_url:
            base_url = "https://api.openai.com/v1"
        key_env = item.get("api_key_env")
        if key_env is not None and (not isinstance(key_env, str) or not key_env):
            raise ProviderConfigError(f"{where}.api_key_env: must be the name of an environment variable")
        if key_env and not environ.get(key_env):
            raise ProviderConfigError(f"{where}.api_key_env: the variable {key_env} is not set")
        models, list_models = models_parse(item.get("models", []), f"{where}.models")
        if not models and not list_models:
            raise ProviderConfigError(
                f'{where}.models: list the models it serves, or "list" to ask its /models'
            )
        if list_models and kind != "openai":
            raise ProviderConfigError(f'{where}.models: "list" is available for openai providers only')
        for key in ("region", "project_id"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise ProviderConfigError(f"{where}.{key}: must be a string")
        if kind == "vertex" and not (item.get("region") and item.get("project_id")):
            raise ProviderConfigError(f"{where}: a vertex provider needs region and project_id")
        if kind == "bedrock" and not item.get("region"):
            raise ProviderConfigError(f"{where}: a bedrock provider needs region")
        out.append(
            ProviderConfig(
                name=name,
                type=kind,
                base_url=base_url or None,
                api_key=environ.get(key_env) if key_env else None,
                api_key_env=key_env,
                headers=headers_parse(item.get("headers"), f"{where}.headers"),
                models=models,
                list_models=list_models,
                region=item.get("region"),
                project_id=item.get("project_id"),
                source="env",
                version="env",
            )
        )
    return out
