"""The API's error body: {"type": "error", "error": {...}, "request_id": ...} (spec 1.10)."""

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    412: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    501: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        error_code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or _TYPES.get(status, "api_error")
        self.details = dict(details or {})
        if error_code:
            self.details["error_code"] = error_code
        self.headers = dict(headers or {})
        if status == 409:
            # The SDK retries 409s unless told not to; our conflicts are deterministic.
            self.headers.setdefault("x-should-retry", "false")

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"type": "error", "error": error, "request_id": request_id}


def bad_request(message: str, *, error_code: str | None = None) -> ApiError:
    return ApiError(400, message, error_code=error_code)


def not_found(kind: str, object_id: str, *, error_code: str | None = None) -> ApiError:
    return ApiError(404, f"{kind} {object_id!r} was not found.", error_code=error_code)


def conflict(message: str, *, error_code: str | None = None) -> ApiError:
    return ApiError(409, message, error_code=error_code)
