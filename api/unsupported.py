"""501 answers, in the spec's error shape, for endpoint families this server does not implement yet.

Mounted after every real router, so a family that gains a real implementation simply takes over
its paths (and its line here should go)."""

import warnings

from django.http import HttpRequest, HttpResponse
from ninja import Router

from api.errors import ApiError

router = Router()

_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]

# (path prefix below /v1, capability name used in the message)
FAMILIES: list[tuple[str, str]] = [
    ("/dreams", "Dreams are"),
    ("/tunnels", "MCP tunnels are"),
    ("/user_profiles", "User profiles are"),
]


def _unsupported(what: str):  # type: ignore[no-untyped-def]
    def view(request: HttpRequest, **_: str) -> HttpResponse:
        # 5xx is retried by the SDK by default; retrying cannot help here.
        raise ApiError(
            501,
            f"{what} not supported by this Galley server yet.",
            error_code="not_implemented",
            headers={"x-should-retry": "false"},
        )

    return view


with warnings.catch_warnings():
    # The views ignore their path parameters on purpose; ninja warns that they are unused.
    warnings.simplefilter("ignore", UserWarning)
    for _prefix, _what in FAMILIES:
        _view = _unsupported(_what)
        router.api_operation(_METHODS, _prefix, include_in_schema=False)(_view)
        router.api_operation(_METHODS, _prefix + "/{path:rest}", include_in_schema=False)(_view)
