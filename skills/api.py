"""/v1/skills (spec 11), as the official SDK calls it: multipart uploads, JSON reads, zip downloads."""

import html
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFilesSent
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from ninja import Router

from api.errors import bad_request
from selfhosted.auth import API_KEY_OR_WORKER
from skills import services
from skills.bundle import too_large
from skills.schemas import DeletedSkill, DeletedSkillVersion, Skill, SkillList, SkillVersion, SkillVersionList

router = Router(tags=["skills"])

# Multipart framing on top of the files themselves.
_OVERHEAD_BYTES = 1024 * 1024

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files[]"],
                    "properties": {
                        "files[]": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "display_name": {"type": "string", "maxLength": services.DISPLAY_NAME_MAX},
                    },
                }
            }
        },
    }
}


class _PathKeepingParser(MultiPartParser):
    """Django keeps only the last component of an upload's file name; a skill upload's file names are
    paths. The parser records each name as sent (bundle.check_path judges it) and hands Django an
    index instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw_names: list[str] = []

    def sanitize_file_name(self, file_name: str) -> str | None:
        name = html.unescape(file_name)
        if name == "":
            return None
        self.raw_names.append(name)
        return f"part{len(self.raw_names) - 1}"


def _uploads(request: HttpRequest) -> tuple[list[tuple[str, int, IO[bytes]]], str | None]:
    limit = settings.GALLEY_SKILL_MAX_BYTES + _OVERHEAD_BYTES
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise too_large(f"files: the upload is larger than the {settings.GALLEY_SKILL_MAX_BYTES}-byte limit.")
    if not (request.content_type or "").startswith("multipart/form-data"):
        raise bad_request("files: send multipart/form-data with the skill's files in parts named `files[]`.")
    parser = _PathKeepingParser(request.META, request, request.upload_handlers, request.encoding)
    try:
        post, files = parser.parse()
    except TooManyFilesSent:
        raise too_large(f"files: more than {settings.GALLEY_SKILL_MAX_FILES} files per skill.") from None
    except RequestDataTooBig:
        raise too_large("the request's form fields are too large.") from None
    except (MultiPartParserError, SuspiciousOperation) as exc:
        raise bad_request(f"body: not a valid multipart/form-data body ({exc}).") from None
    parts = files.getlist("files[]") + files.getlist("files")
    if post.getlist("files[]") or post.getlist("files"):
        raise bad_request("files: every part needs a file name carrying its path (e.g. 'my-skill/SKILL.md').")
    unknown = sorted(set(files) - {"files[]", "files"}) + sorted(set(post) - {"display_name"})
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    uploads = []
    for part in parts:
        index = int(str(part.name).removeprefix("part"))
        uploads.append((parser.raw_names[index], int(part.size or 0), part))
    return uploads, post.get("display_name")


@router.post("/skills", response=Skill, openapi_extra=_UPLOAD_BODY, summary="Create a skill")
def skill_create(request: HttpRequest) -> dict[str, Any]:
    uploads, display_name = _uploads(request)
    skill = services.skill_create(
        workspace=request.workspace,  # type: ignore[attr-defined]
        uploads=uploads,
        display_name=display_name,
    )
    return services.skill_wire(skill)


@router.get("/skills", response=SkillList, summary="List skills")
def skill_list(
    request: HttpRequest, limit: int | None = None, page: str | None = None, source: str | None = None
) -> dict[str, Any]:
    return services.skill_list(
        workspace=request.workspace,  # type: ignore[attr-defined]
        source=source,
        limit=limit,
        page=page,
    )


@router.get("/skills/{skill_id}", response=Skill, summary="Get a skill")
def skill_retrieve(request: HttpRequest, skill_id: str) -> dict[str, Any]:
    return services.skill_wire(services.skill_get(workspace=request.workspace, skill_id=skill_id))  # type: ignore[attr-defined]


@router.delete("/skills/{skill_id}", response=DeletedSkill, summary="Delete a skill and its versions")
def skill_delete(request: HttpRequest, skill_id: str) -> dict[str, Any]:
    services.skill_delete(workspace=request.workspace, skill_id=skill_id)  # type: ignore[attr-defined]
    return {"id": skill_id, "type": "skill_deleted"}


@router.post(
    "/skills/{skill_id}/versions",
    response=SkillVersion,
    openapi_extra=_UPLOAD_BODY,
    summary="Create a skill version",
)
def version_create(request: HttpRequest, skill_id: str) -> dict[str, Any]:
    uploads, display_name = _uploads(request)
    if display_name is not None:
        raise bad_request("display_name: is set when the skill is created, not per version.")
    version = services.skill_version_create(
        workspace=request.workspace,  # type: ignore[attr-defined]
        skill_id=skill_id,
        uploads=uploads,
    )
    return services.version_wire(version)


@router.get("/skills/{skill_id}/versions", response=SkillVersionList, summary="List skill versions")
def version_list(
    request: HttpRequest, skill_id: str, limit: int | None = None, page: str | None = None
) -> dict[str, Any]:
    skill = services.skill_get(workspace=request.workspace, skill_id=skill_id)  # type: ignore[attr-defined]
    return services.version_list(skill=skill, limit=limit, page=page)


# A self-hosted worker downloads its session's skills with its own credential (the SDK's
# lib/environments/_skills.py): these two reads also take an environment key or a sessions token.
@router.get(
    "/skills/{skill_id}/versions/{version}",
    response=SkillVersion,
    auth=API_KEY_OR_WORKER,
    summary="Get a skill version",
)
def version_retrieve(request: HttpRequest, skill_id: str, version: str) -> dict[str, Any]:
    skill = services.skill_get(workspace=request.workspace, skill_id=skill_id)  # type: ignore[attr-defined]
    return services.version_wire(services.version_get(skill=skill, version=version))


@router.delete(
    "/skills/{skill_id}/versions/{version}", response=DeletedSkillVersion, summary="Delete a skill version"
)
def version_delete(request: HttpRequest, skill_id: str, version: str) -> dict[str, Any]:
    deleted = services.version_delete(
        workspace=request.workspace,  # type: ignore[attr-defined]
        skill_id=skill_id,
        version=version,
    )
    return {"id": deleted, "type": "skill_version_deleted"}


@router.get(
    "/skills/{skill_id}/versions/{version}/content",
    auth=API_KEY_OR_WORKER,
    summary="Download a skill version as a zip",
    openapi_extra={
        "responses": {
            200: {"description": "The version's files", "content": {"application/zip": {"schema": {}}}}
        }
    },
)
def version_content(request: HttpRequest, skill_id: str, version: str) -> HttpResponse:
    skill = services.skill_get(workspace=request.workspace, skill_id=skill_id)  # type: ignore[attr-defined]
    data, filename = services.version_archive(version=services.version_get(skill=skill, version=version))
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
