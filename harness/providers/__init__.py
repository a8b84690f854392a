"""Model providers: one interface, one module per provider (design.md, "Models")."""

from harness.providers.base import (
    ModelAnswer,
    ModelError,
    ModelRequest,
    ModelUsage,
    Provider,
    StreamListener,
)


def provider_for(model: str) -> Provider:
    # `<provider>/<model>` goes to that provider of the registry; bare claude-* ids to Anthropic.
    from providers.registry import provider_for as routed

    return routed(model)


__all__ = [
    "ModelAnswer",
    "ModelError",
    "ModelRequest",
    "ModelUsage",
    "Provider",
    "StreamListener",
    "provider_for",
]
