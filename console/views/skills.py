"""Skills: the built-in ones and the workspace's custom ones, uploaded as a folder or a zip, with their
versions and files. Uploads go through the same checks as the API (skills.bundle)."""

from typing import IO, Any

from django.contrib import messages
from django.core.files.uploadedfile import UploadedFile
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from api.errors import ApiError
from console.access import console_view, render_page
from skills import services
from skills.catalog import BuiltinSkill, builtin_get, builtin_ids
from skills.models import Skill, SkillVersion

TEXT_PREVIEW_BYTES = 200_000


def _uploads(request: HttpRequest) -> list[tuple[str, int, IO[bytes]]]:
    """A zip from the `archive` input, or a folder from the `folder` input. Browsers send a folder's
    files with their relative paths, which Django shortens to the last component; the page's script
    sends the paths as `paths` fields in the same order."""
    archive = request.FILES.get("archive")
    if archive is not None:
        return [(archive.name or "upload.zip", int(archive.size or 0), archive)]
    folder: list[UploadedFile] = request.FILES.getlist("folder")
    paths = request.POST.getlist("paths")
    if folder and len(paths) != len(folder):
        raise ApiError(400, "files: the folder's file paths were not sent; upload a zip instead.")
    return [(path, int(f.size or 0), f) for path, f in zip(paths, folder, strict=True)]


def _skill(request: HttpRequest, skill_id: str) -> Skill | BuiltinSkill:
    try:
        return services.skill_get(workspace=request.access.workspace, skill_id=skill_id)  # type: ignore[attr-defined]
    except ApiError:
        raise Http404("No such skill") from None


def _list_page(request: HttpRequest, errors: dict[str, str]) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    custom = Skill.objects.filter(workspace=workspace).order_by("name")
    builtins = [builtin_get(i) for i in builtin_ids()]
    return render_page(
        request,
        "console/skill_list.html",
        {"nav": "skills", "custom": custom, "builtins": builtins, "errors": errors},
        status=400 if errors else 200,
    )


@console_view()
def skill_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request, {})


@require_POST
@console_view(Role.EDITOR)
def skill_upload(request: HttpRequest) -> HttpResponse:
    try:
        skill = services.skill_create(
            workspace=request.access.workspace,  # type: ignore[attr-defined]
            uploads=_uploads(request),
            display_name=request.POST.get("display_name"),
        )
    except ApiError as exc:
        return _list_page(request, {"upload": exc.message})
    messages.success(request, f"Skill {skill.name!r} uploaded.")
    return HttpResponseRedirect(f"/skills/{skill.pk}")


@console_view()
def skill_detail(request: HttpRequest, skill_id: str) -> HttpResponse:
    return _detail_page(request, _skill(request, skill_id), {})


@require_POST
@console_view(Role.EDITOR)
def skill_version_upload(request: HttpRequest, skill_id: str) -> HttpResponse:
    skill = _skill(request, skill_id)
    try:
        version = services.skill_version_create(
            workspace=request.access.workspace,  # type: ignore[attr-defined]
            skill_id=skill_id,
            uploads=_uploads(request),
        )
    except ApiError as exc:
        return _detail_page(request, skill, {"upload": exc.message})
    messages.success(request, f"Version {version.id} uploaded.")
    return HttpResponseRedirect(f"/skills/{skill_id}?version={version.id}")


def _detail_page(request: HttpRequest, skill: Skill | BuiltinSkill, errors: dict[str, str]) -> HttpResponse:
    if isinstance(skill, BuiltinSkill):
        versions = [services.version_get(skill=skill, version="latest")]
    else:
        rows = SkillVersion.objects.filter(skill=skill).select_related("skill").order_by("-created_at", "-id")
        versions = [services.version_get(skill=skill, version=row.id) for row in rows]
    try:
        chosen = services.version_get(skill=skill, version=request.GET.get("version") or "latest")
    except ApiError:
        raise Http404("No such version") from None
    files = services.version_files(version=chosen)
    path = request.GET.get("file") or "SKILL.md"
    shown = next((data for name, data in files if name == path), None)
    text: str | None = None
    if shown is not None:
        try:
            text = shown[:TEXT_PREVIEW_BYTES].decode("utf-8")
        except UnicodeDecodeError:
            text = None
    context: dict[str, Any] = {
        "nav": "skills",
        "skill": skill,
        "wire": services.skill_wire(skill),
        "builtin": isinstance(skill, BuiltinSkill),
        "versions": versions,
        "chosen": chosen,
        "files": [(name, len(data)) for name, data in files],
        "path": path,
        "text": text,
        "binary": shown is not None and text is None,
        "errors": errors,
        "upload_action": f"/skills/{skill.id}/versions",
    }
    return render_page(request, "console/skill_detail.html", context, status=400 if errors else 200)


@require_POST
@console_view(Role.EDITOR)
def skill_delete(request: HttpRequest, skill_id: str) -> HttpResponse:
    skill = _skill(request, skill_id)
    try:
        services.skill_delete(workspace=request.access.workspace, skill_id=skill_id)  # type: ignore[attr-defined]
    except ApiError as exc:
        messages.error(request, exc.message)
        return HttpResponseRedirect(f"/skills/{skill_id}")
    messages.success(request, f"Skill {getattr(skill, 'name', skill_id)!r} deleted.")
    return HttpResponseRedirect("/skills")
