"""The providers page's form: text fields parsed into the registry's values, errors per field."""

from typing import Any

from django.http import QueryDict

from providers.config import ProviderConfigError

FIELDS = ("name", "type", "base_url", "region", "project_id", "models", "headers")


def models_parse_lines(text: str) -> list[dict[str, Any]]:
    """One model per line: `id [input=USD/MTok] [output=USD/MTok] [window=tokens] [images=no]`."""
    out: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        model: dict[str, Any] = {"id": words[0]}
        for word in words[1:]:
            key, eq, value = word.partition("=")
            try:
                if key in ("input", "output") and eq:
                    model[f"{key}_price"] = float(value)
                elif key == "window" and eq:
                    model["context_window"] = int(value.replace("_", "").replace(",", ""))
                elif key == "images" and value in ("yes", "no"):
                    model["images"] = value == "yes"
                else:
                    raise ValueError
            except ValueError:
                raise ProviderConfigError(
                    f"models: line {number}: {word!r} is not input=, output=, window= or images=yes/no"
                ) from None
        out.append(model)
    return out


def models_lines(models: list[dict[str, Any]]) -> str:
    lines = []
    for model in models:
        words = [model["id"]]
        if model.get("input_price") is not None:
            words.append(f"input={model['input_price']:g}")
        if model.get("output_price") is not None:
            words.append(f"output={model['output_price']:g}")
        if model.get("context_window"):
            words.append(f"window={model['context_window']}")
        if model.get("images") is False:
            words.append("images=no")
        lines.append(" ".join(words))
    return "\n".join(lines)


def headers_parse_lines(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ProviderConfigError(f"headers: line {number} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def provider_data(post: QueryDict) -> dict[str, Any]:
    """Service input from the posted form; raises ProviderConfigError naming the field."""
    return {
        "name": post.get("name", "").strip(),
        "type": post.get("type", ""),
        "base_url": post.get("base_url", "").strip(),
        "api_key": post.get("api_key", ""),
        "clear_api_key": post.get("clear_api_key") == "on",
        "headers": headers_parse_lines(post.get("headers", "")),
        "clear_headers": post.get("clear_headers") == "on",
        "list_models": post.get("list_models") == "on",
        "models": models_parse_lines(post.get("models", "")),
        "region": post.get("region", "").strip(),
        "project_id": post.get("project_id", "").strip(),
    }


def field_of(error: ProviderConfigError) -> str:
    name = str(error).split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
    return name if name in (*FIELDS, "api_key", "list_models") else "form"
