"""Memory stores attached to sessions (spec 5 `resources`, 6, 13): at most 8 per session, only at
create, each mounted at /mnt/memory/<slug of its name>/ and described in the system prompt."""

import re
from dataclasses import dataclass
from typing import Any

from django.db.models import Exists, OuterRef

from accounts.models import Workspace
from api.errors import bad_request, not_found
from memory.models import MemoryStore, SessionMemoryStore

MAX_STORES_PER_SESSION = 8
INSTRUCTIONS_MAX = 4096
MOUNT_ROOT = "/mnt/memory"
ACCESS = ("read_write", "read_only")


def slug_of(name: str) -> str:
    """Lowercased; every run of characters other than ASCII letters and digits becomes one hyphen."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "store"


def is_memory_resource(spec: Any) -> bool:
    return isinstance(spec, dict) and spec.get("type") == "memory_store"


@dataclass
class PlannedAttachment:
    store: MemoryStore
    access: str
    instructions: str | None
    mount_path: str


def memory_resources_plan(*, workspace: Workspace, resources: Any) -> list[PlannedAttachment]:
    """Check the `memory_store` entries of a session-create `resources` list (the others are the
    files app's). Nothing is written; errors name the entry."""
    if not isinstance(resources, list):
        return []
    planned: list[PlannedAttachment] = []
    for index, spec in enumerate(resources):
        if not isinstance(spec, dict) or spec.get("type") != "memory_store":
            continue
        where = f"resources[{index}]"
        unknown = sorted(set(spec) - {"type", "memory_store_id", "access", "instructions"})
        if unknown:
            raise bad_request(f"{where}.{unknown[0]}: is not a field of a memory_store resource.")
        store_id = spec.get("memory_store_id")
        if not isinstance(store_id, str) or not store_id:
            raise bad_request(f"{where}.memory_store_id: field required.")
        store = MemoryStore.objects.filter(workspace=workspace, pk=store_id).first()
        if store is None:
            raise not_found("memory store", store_id)
        if store.is_archived:
            raise bad_request(f"{where}.memory_store_id: memory store {store_id!r} is archived.")
        access = spec.get("access") or "read_write"
        if access not in ACCESS:
            raise bad_request(f"{where}.access: must be 'read_write' or 'read_only', got {access!r}.")
        instructions = spec.get("instructions")
        if instructions is not None and (
            not isinstance(instructions, str) or len(instructions) > INSTRUCTIONS_MAX
        ):
            raise bad_request(
                f"{where}.instructions: must be a string of at most {INSTRUCTIONS_MAX} characters."
            )
        if any(p.store.pk == store.pk for p in planned):
            raise bad_request(f"{where}.memory_store_id: memory store {store_id!r} is attached twice.")
        mount_path = f"{MOUNT_ROOT}/{slug_of(store.name)}"
        if any(p.mount_path == mount_path for p in planned):
            raise bad_request(
                f"{where}.memory_store_id: another attached store also mounts at {mount_path!r}; "
                "rename one of the stores."
            )
        planned.append(PlannedAttachment(store, access, instructions or None, mount_path))
        if len(planned) > MAX_STORES_PER_SESSION:
            raise bad_request(
                f"resources: a session can attach at most {MAX_STORES_PER_SESSION} memory stores."
            )
    return planned


def memory_resources_attach(*, session: Any, planned: list[PlannedAttachment]) -> None:
    """In the session-create transaction."""
    SessionMemoryStore.objects.bulk_create(
        [
            SessionMemoryStore(
                session=session,
                store=p.store,
                memory_store_id=p.store.pk,
                position=i,
                access=p.access,
                instructions=p.instructions,
                name=p.store.name,
                description=p.store.description,
                mount_path=p.mount_path,
            )
            for i, p in enumerate(planned)
        ]
    )


def attachment_wire(row: SessionMemoryStore) -> dict[str, Any]:
    return {
        "type": "memory_store",
        "memory_store_id": row.memory_store_id,
        "access": row.access,
        "instructions": row.instructions,
        "name": row.name,
        "description": row.description,
        "mount_path": row.mount_path,
    }


def memory_resources_wire_many(session_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    wire: dict[str, list[dict[str, Any]]] = {sid: [] for sid in session_ids}
    for row in SessionMemoryStore.objects.filter(session_id__in=session_ids).order_by(
        "session_id", "position"
    ):
        wire[row.session_id].append(attachment_wire(row))
    return wire


def attachments_of(session_id: str) -> list[SessionMemoryStore]:
    return list(SessionMemoryStore.objects.filter(session_id=session_id).order_by("position"))


def attachment_of(session_id: str, store_id: str) -> SessionMemoryStore | None:
    return SessionMemoryStore.objects.filter(
        session_id=session_id, memory_store_id=store_id, store__isnull=False
    ).first()


def agent_paths(session_id: str, rows: list[SessionMemoryStore]) -> dict[str, str]:
    """Where the agent finds each store: its mount path, except on the development-only `process`
    sandbox backend, which has no mount namespace to bind /mnt/memory/<slug> in: there the agent
    works on the store's host directory itself. A self-hosted session's worker mounts its own."""
    from sandboxes.backends import backend_is_unsafe

    paths = {r.mount_path: r.mount_path for r in rows}
    if not rows or not backend_is_unsafe():
        return paths
    from memory.mounts import store_dir
    from sandboxes.services import sandbox_root
    from selfhosted.harness import session_is_remote

    if session_is_remote(session_id):
        return paths
    return {path: str(store_dir(sandbox_root(session_id), path)) for path in paths}
def _mounted(row: SessionMemoryStore) -> bool:
    return row.store_id is not None  # a deleted store's attachment stays, without its mount


def memory_mounted_exists() -> Exists:
    """For an annotation on sessions: whether the session (OuterRef "pk") mounts any store, so a
    caller that reads the session row anyway learns it without a query of its own."""
    return Exists(SessionMemoryStore.objects.filter(session_id=OuterRef("pk"), store__isnull=False))


def memory_system_prompt(session_id: str, system: str | None) -> str | None:
    """The agent's system prompt with a section describing the session's memory mounts."""
    rows = [r for r in attachments_of(session_id) if _mounted(r)]
    if not rows:
        return system
    shown = agent_paths(session_id, rows)
    lines = [
        "Memory stores are mounted in your sandbox as directories of text files that persist across "
        "sessions. Read them with your file tools before you start; save what is worth remembering "
        "(one topic per file, at most 100 kB each). Changes are saved after every bash, write or "
        "edit call; another session may change a file at the same time, and a conflict is reported "
        "in the tool result."
    ]
    for row in rows:
        mode = "read-only" if row.access == "read_only" else "read and write"
        line = f"- {shown[row.mount_path]}/ ({mode}): {row.name}"
        if row.description:
            line += f": {row.description}"
        if row.instructions:
            line += f"\n  Instructions: {row.instructions}"
        lines.append(line)
    section = "\n".join(lines)
    return f"{system}\n\n{section}" if system else section
