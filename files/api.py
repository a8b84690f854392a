"""/v1/files and /v1/sessions/{session_id}/resources (spec 15, 6)."""

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import FileResponse, HttpRequest
from django.http.multipartparser import MultiPartParserError
from ninja import Query, Router

from api.errors import ApiError, bad_request
from files import services
from files.schemas import (
    DeletedFile,
    DeletedSessionResource,
    FileList,
    FileMetadata,
    SessionResource,
    SessionResourceList,
    SessionResourceParams,
    SessionResourceUpdateParams,
)

router = Router(tags=["files"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "expires_in_seconds": {
                            "type": "integer",
                            "minimum": services.EXPIRES_MIN_SECONDS,
                            "maximum": services.EXPIRES_MAX_SECONDS,
                        },
                    },
                }
            }
        },
    }
}


@router.post("/files", response=FileMetadata, openapi_extra=_UPLOAD_BODY, summary="Upload a file")
def file_upload(request: HttpRequest) -> dict[str, Any]:
    limit = settings.GALLEY_MAX_BODY_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise ApiError(413, f"file: the request body is larger than the {limit}-byte limit.")
    if not (request.content_type or "").startswith("multipart/form-data"):
        raise bad_request("file: send multipart/form-data with the file in a part named `file`.")
    try:
        upload = request.FILES.get("file")
        expires = request.POST.get("expires_in_seconds")
    except RequestDataTooBig:
        raise ApiError(413, f"the request body is larger than the {limit}-byte limit.") from None
    except (MultiPartParserError, SuspiciousOperation) as exc:
        raise bad_request(f"body: not a valid multipart/form-data body ({exc}).") from None
    if upload is None:
        raise bad_request("file: a part named `file` is required.")
    file = services.file_create(
        workspace=request.workspace,  # type: ignore[attr-defined]
        filename=upload.name,
        content=upload.chunks(),
        mime_type=upload.content_type,
        expires_in_seconds=services.check_expires_in(expires),
    )
    return services.file_wire(file)


@router.get("/files", response=FileList, summary="List files")
def file_list(
    request: HttpRequest,
    limit: int | None = None,
    page: str | None = None,
    scope_id: str | None = None,
    ids: list[str] | None = Query(None, alias="ids[]"),  # type: ignore[arg-type]  # noqa: B008
) -> dict[str, Any]:
    return services.file_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        limit=limit,
        page=page,
        scope_id=scope_id,
        ids=ids,
    )


@router.get("/files/{file_id}", response=FileMetadata, summary="Get file metadata")
def file_retrieve(request: HttpRequest, file_id: str) -> dict[str, Any]:
    return services.file_wire(services.file_get(workspace=request.workspace, file_id=file_id))  # type: ignore[attr-defined]


@router.get(
    "/files/{file_id}/content",
    summary="Download a file",
    openapi_extra={
        "responses": {
            200: {"description": "The file's bytes", "content": {"application/octet-stream": {"schema": {}}}}
        }
    },
)
def file_content(request: HttpRequest, file_id: str) -> FileResponse:
    file, handle = services.file_open(workspace=request.workspace, file_id=file_id)  # type: ignore[attr-defined]
    response = FileResponse(handle, content_type=file.mime_type, as_attachment=True, filename=file.filename)
    return response


@router.delete("/files/{file_id}", response=DeletedFile, summary="Delete a file")
def file_delete(request: HttpRequest, file_id: str) -> dict[str, Any]:
    services.file_delete(workspace=request.workspace, file_id=file_id)  # type: ignore[attr-defined]
    return {"id": file_id, "type": "file_deleted"}


@router.post("/sessions/{session_id}/resources", response=SessionResource, tags=["session resources"])
def session_resource_add(
    request: HttpRequest, session_id: str, payload: SessionResourceParams
) -> dict[str, Any]:
    resource = services.session_resource_add(
        workspace=request.workspace,  # type: ignore[attr-defined]
        session_id=session_id,
        body=payload.dict(exclude_unset=True),
    )
    return services.session_resource_wire(resource)


@router.get("/sessions/{session_id}/resources", response=SessionResourceList, tags=["session resources"])
def session_resource_list(
    request: HttpRequest, session_id: str, limit: int | None = None, page: str | None = None
) -> dict[str, Any]:
    return services.session_resource_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        session_id=session_id,
        limit=limit,
        page=page,
    )


@router.get(
    "/sessions/{session_id}/resources/{resource_id}", response=SessionResource, tags=["session resources"]
)
def session_resource_retrieve(request: HttpRequest, session_id: str, resource_id: str) -> dict[str, Any]:
    resource = services.session_resource_get(
        workspace=request.workspace,  # type: ignore[attr-defined]
        session_id=session_id,
        resource_id=resource_id,
    )
    return services.session_resource_wire(resource)


@router.post(
    "/sessions/{session_id}/resources/{resource_id}", response=SessionResource, tags=["session resources"]
)
def session_resource_update(
    request: HttpRequest, session_id: str, resource_id: str, payload: SessionResourceUpdateParams
) -> dict[str, Any]:
    resource = services.session_resource_update(
        workspace=request.workspace,  # type: ignore[attr-defined]
        session_id=session_id,
        resource_id=resource_id,
        authorization_token=payload.authorization_token,
    )
    return services.session_resource_wire(resource)


@router.delete(
    "/sessions/{session_id}/resources/{resource_id}",
    response=DeletedSessionResource,
    tags=["session resources"],
)
def session_resource_delete(request: HttpRequest, session_id: str, resource_id: str) -> dict[str, Any]:
    services.session_resource_delete(
        workspace=request.workspace,  # type: ignore[attr-defined]
        session_id=session_id,
        resource_id=resource_id,
    )
    return {"id": resource_id, "type": "session_resource_deleted"}
