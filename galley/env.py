"""Typed readers of the process environment. A bad value fails loudly at start-up."""

import os
from pathlib import Path


class ConfigError(RuntimeError):
    pass


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and parsed < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {parsed}")
    return parsed


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        parsed = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and parsed < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {parsed}")
    return parsed


def env_float_list(name: str, default: list[float], *, minimum: float | None = None) -> list[float]:
    """Comma-separated numbers, e.g. a retry schedule in seconds."""
    parsed = []
    for item in env_list(name, [str(v) for v in default]):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{name} must be comma-separated numbers, got {item!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}: every value must be at least {minimum}, got {value}")
        parsed.append(value)
    return parsed


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def secret_file(path: Path, generate: "callable[[], str]") -> str:  # type: ignore[valid-type]
    """Read a generated secret kept in the data dir, creating it (mode 0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
