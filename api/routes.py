"""Mounts every app's /v1 router on the one NinjaAPI."""

from ninja import NinjaAPI


def register_routers(api: NinjaAPI) -> None:
    if getattr(api, "_galley_routers", False):
        return
    api._galley_routers = True  # type: ignore[attr-defined]
    # Each app's api.py exposes `router`; imported here so urls.py stays declarative.
    from agents.api import router as agents_router
    from deployments.api import router as deployments_router
    from files.api import router as files_router
    from memory.api import router as memory_router
    from selfhosted.api import router as selfhosted_router
    from sessions.api import router as sessions_router
    from skills.api import router as skills_router
    from vaults.api import router as vaults_router
    from webhooks.api import router as webhooks_router

    api.add_router("/", agents_router)
    api.add_router("/", sessions_router)
    api.add_router("/", vaults_router)
    api.add_router("/", files_router)
    api.add_router("/", webhooks_router)
    api.add_router("/", deployments_router)
    api.add_router("/", skills_router)
    api.add_router("/", memory_router)
    api.add_router("/", selfhosted_router)
    # Last: 501 for the families nobody implements yet (real routers above take precedence).
    from api.unsupported import router as unsupported_router

    api.add_router("/", unsupported_router)
