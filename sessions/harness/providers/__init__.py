"""Model providers: one interface, one module per provider (design.md, "Models")."""

from sessions.harness.providers.base import (
    ModelAnswer,
    ModelError,
    ModelRequest,
    ModelUsage,
    Provider,
    StreamListener,
)


def provider_for(model: str) -> Provider:
    # Every model goes to the Anthropic Messages API for now; other providers plug in here.
    from sessions.harness.providers.anthropic import AnthropicProvider

    return AnthropicProvider.shared()


__all__ = [
    "ModelAnswer",
    "ModelError",
    "ModelRequest",
    "ModelUsage",
    "Provider",
    "StreamListener",
    "provider_for",
]
