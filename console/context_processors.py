from typing import Any

from django.http import HttpRequest

from sandboxes.backends import backend_is_unsafe


def sandbox(request: HttpRequest) -> dict[str, Any]:
    """Every console page warns when agent code runs without isolation (the development backend)."""
    return {"sandbox_unsafe": backend_is_unsafe()}
