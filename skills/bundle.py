"""The skill upload boundary: turns uploaded files (multipart `files[]` whose names carry paths, or one
zip) into a checked bundle, and a bundle into the canonical zip archive stored on disk.

Every rule is checked here, on the upload as given, before anything is written: the limits (total
unpacked size, file count, size of one file, compression ratio of a zip), the path rules (relative,
no `..`, no symbolic links or other special files, one top-level folder holding SKILL.md) and the
SKILL.md front matter (a YAML mapping with a kebab-case `name` and a `description`). A violation
raises an ApiError (400, or 413 for sizes) naming the file and the rule."""

import hashlib
import io
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

import yaml
from django.conf import settings

from api.errors import ApiError, bad_request

SKILL_FILE = "SKILL.md"
NAME_MAX = 64
DESCRIPTION_MAX = 1024
PATH_MAX = 1024
PART_MAX = 255
RESERVED_WORDS = ("anthropic", "claude")
_SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Archive timestamps are fixed so that the same files always give the same archive bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_SPECIAL = (stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
# Clutter some zip tools add; never part of a skill.
_IGNORED_PREFIXES = ("__MACOSX/",)
_IGNORED_NAMES = (".DS_Store",)


@dataclass(frozen=True)
class Limits:
    total_bytes: int
    max_files: int
    file_bytes: int
    zip_ratio: int

    @classmethod
    def from_settings(cls) -> "Limits":
        return cls(
            total_bytes=settings.GALLEY_SKILL_MAX_BYTES,
            max_files=settings.GALLEY_SKILL_MAX_FILES,
            file_bytes=settings.GALLEY_SKILL_MAX_FILE_BYTES,
            zip_ratio=settings.GALLEY_SKILL_MAX_ZIP_RATIO,
        )


@dataclass(frozen=True)
class BundleFile:
    path: str  # relative to the skill folder, posix
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class Bundle:
    name: str
    description: str
    folder: str  # the top-level folder as uploaded
    files: tuple[BundleFile, ...]  # sorted by path, SKILL.md included

    @property
    def size_bytes(self) -> int:
        return sum(len(f.data) for f in self.files)

    def archive(self) -> bytes:
        """The canonical zip: every file under `<name>/`, sorted, fixed timestamps, unix modes."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in self.files:
                info = zipfile.ZipInfo(f"{self.name}/{f.path}", date_time=_ZIP_TIME)
                info.create_system = _UNIX
                info.external_attr = (stat.S_IFREG | (0o755 if f.executable else 0o644)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, f.data)
        return buf.getvalue()

    def skill_md(self) -> bytes:
        return next(f.data for f in self.files if f.path == SKILL_FILE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def too_large(message: str) -> ApiError:
    return ApiError(413, message, error_type="request_too_large")


# --- paths ---------------------------------------------------------------------------------------------


def check_path(raw: str, where: str) -> tuple[str, ...]:
    """A relative posix path as its parts, or a 400 naming `where` and the rule it breaks."""
    if not raw:
        raise bad_request(f"{where}: the file name is empty; it must be a path such as 'my-skill/SKILL.md'.")
    if len(raw) > PATH_MAX:
        raise bad_request(f"{where}: the path is longer than {PATH_MAX} characters.")
    if _CONTROL.search(raw):
        raise bad_request(f"{where}: the path {raw!r} contains control characters.")
    if "\\" in raw:
        raise bad_request(f"{where}: the path {raw!r} contains '\\'; use '/' between folders.")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise bad_request(f"{where}: the path {raw!r} is absolute; paths must be relative to the upload.")
    parts = tuple(raw.split("/"))
    for part in parts:
        if part == "..":
            raise bad_request(f"{where}: the path {raw!r} escapes the skill folder ('..').")
        if part in ("", "."):
            raise bad_request(f"{where}: the path {raw!r} has an empty or '.' component.")
        if len(part.encode()) > PART_MAX:
            raise bad_request(f"{where}: a component of {raw!r} is longer than {PART_MAX} bytes.")
    return parts


def _ignored(name: str) -> bool:
    return name.startswith(_IGNORED_PREFIXES) or name.rsplit("/", 1)[-1] in _IGNORED_NAMES


# --- readers -----------------------------------------------------------------------------------------


def read_uploads(
    uploads: list[tuple[str, int, IO[bytes]]], *, limits: Limits | None = None
) -> list[tuple[str, bytes, bool]]:
    """Multipart parts (name as sent, size, stream) -> (path, bytes, executable). One part that is a
    zip archive is unpacked instead. Sizes are checked before any part is read."""
    limits = limits or Limits.from_settings()
    if not uploads:
        raise bad_request("files: at least one file is required (a folder holding SKILL.md, or one zip).")
    if len(uploads) == 1 and uploads[0][0].lower().endswith(".zip"):
        name, size, stream = uploads[0]
        if size > limits.total_bytes:
            raise too_large(f"files: the zip {name!r} is larger than the {limits.total_bytes}-byte limit.")
        return read_zip(stream.read(), name=name, limits=limits)
    if len(uploads) > limits.max_files:
        raise too_large(
            f"files: {len(uploads)} files exceed the limit of {limits.max_files} files per skill."
        )
    total = 0
    for i, (name, size, _) in enumerate(uploads):
        if size > limits.file_bytes:
            raise too_large(
                f"files[{i}]: {name!r} is larger than the {limits.file_bytes}-byte limit per file."
            )
        total += size
    if total > limits.total_bytes:
        raise too_large(
            f"files: the files add up to {total} bytes, over the {limits.total_bytes}-byte limit."
        )
    out = []
    for i, (name, _, stream) in enumerate(uploads):
        check_path(name, f"files[{i}]")
        data = stream.read(limits.file_bytes + 1)
        if len(data) > limits.file_bytes:
            raise too_large(
                f"files[{i}]: {name!r} is larger than the {limits.file_bytes}-byte limit per file."
            )
        out.append((name, data, False))
    return out


def read_zip(
    data: bytes, *, name: str = "upload.zip", limits: Limits | None = None
) -> list[tuple[str, bytes, bool]]:
    """A zip archive -> (path, bytes, executable), refusing bombs, links, encryption and bad paths
    from the central directory before a single entry is decompressed."""
    limits = limits or Limits.from_settings()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError):
        raise bad_request(f"files: {name!r} is not a valid zip archive.") from None
    with zf:
        entries = []
        for info in zf.infolist():
            member = info.filename
            mode = info.external_attr >> 16 if info.create_system == _UNIX else None
            if mode is not None and stat.S_IFMT(mode) in _SPECIAL:
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                raise bad_request(f"files: {member!r} in {name!r} is {kind}; only regular files are allowed.")
            if info.is_dir() or (mode is not None and stat.S_ISDIR(mode)) or _ignored(member):
                continue
            if info.flag_bits & 0x1:
                raise bad_request(f"files: {member!r} in {name!r} is encrypted.")
            check_path(member, f"files: {name!r} entry")
            entries.append((info, bool(mode and mode & 0o111)))
        if len(entries) > limits.max_files:
            raise too_large(
                f"files: {name!r} holds {len(entries)} files, over the limit of {limits.max_files} per skill."
            )
        total = 0
        for info, _ in entries:
            if info.file_size > limits.file_bytes:
                raise too_large(
                    f"files: {info.filename!r} in {name!r} unpacks to {info.file_size} bytes, over the "
                    f"{limits.file_bytes}-byte limit per file."
                )
            # Small files compress well for innocent reasons; only a large, highly compressed entry is a bomb.
            if info.file_size > 1024 * 1024 and info.file_size > limits.zip_ratio * max(
                info.compress_size, 1
            ):
                raise bad_request(
                    f"files: {info.filename!r} in {name!r} has a compression ratio over {limits.zip_ratio}:1 "
                    "(a zip bomb?); refused."
                )
            total += info.file_size
        if total > limits.total_bytes:
            raise too_large(
                f"files: {name!r} unpacks to {total} bytes, over the {limits.total_bytes}-byte limit."
            )
        out = []
        for info, executable in entries:
            try:
                # zipfile never reads past the declared size, and checks the CRC at the end.
                content = zf.read(info)
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
                raise bad_request(f"files: {info.filename!r} in {name!r} cannot be read ({exc}).") from None
            out.append((info.filename, content, executable))
        return out


# --- the bundle --------------------------------------------------------------------------------------


def parse_front_matter(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request("SKILL.md: is not UTF-8 text.") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise bad_request(
            "SKILL.md: must start with YAML front matter between '---' lines, "
            "holding `name` and `description`."
        )
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise bad_request("SKILL.md: the front matter has no closing '---' line.") from None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 2})" if where is not None else ""
        raise bad_request(f"SKILL.md: the front matter is not valid YAML{at}.") from None
    if not isinstance(meta, dict):
        raise bad_request("SKILL.md: the front matter must be a YAML mapping with `name` and `description`.")
    return meta


def check_name(name: str, where: str) -> str:
    if not _SLUG.match(name) or len(name) > NAME_MAX:
        raise bad_request(
            f"{where}: {name!r} is not a skill name: use at most {NAME_MAX} lowercase letters, digits and "
            "single hyphens (for example 'quarterly-report')."
        )
    for word in RESERVED_WORDS:
        if word in name:
            raise bad_request(f"{where}: {name!r} contains the reserved word {word!r}.")
    return name


def build_bundle(entries: Iterable[tuple[str, bytes, bool]]) -> Bundle:
    """Checked (path, bytes, executable) entries -> a Bundle, enforcing one top-level folder holding
    SKILL.md, unique paths, and the front matter."""
    folder: str | None = None
    files: dict[str, BundleFile] = {}
    for raw, data, executable in entries:
        parts = check_path(raw, "files")
        if len(parts) < 2:
            raise bad_request(
                f"files: {raw!r} is not inside a folder; upload one folder holding SKILL.md "
                "(file names like 'my-skill/SKILL.md')."
            )
        if folder is None:
            folder = parts[0]
        elif parts[0] != folder:
            raise bad_request(
                f"files: {raw!r} is outside the folder {folder!r}; "
                "every file must be under one top-level folder."
            )
        path = "/".join(parts[1:])
        if path in files:
            raise bad_request(f"files: {raw!r} is uploaded twice.")
        files[path] = BundleFile(path=path, data=data, executable=executable)
    if folder is None:
        raise bad_request("files: the upload holds no files.")
    for path in files:
        parents = PurePosixPath(path).parents
        for parent in list(parents)[:-1]:
            if str(parent) in files:
                raise bad_request(f"files: {folder}/{parent} is both a file and a folder.")
    if SKILL_FILE not in files:
        raise bad_request(
            f"files: {folder}/{SKILL_FILE} is missing; a skill folder must hold SKILL.md at its top."
        )
    meta = parse_front_matter(files[SKILL_FILE].data)
    raw_name = meta.get("name")
    if raw_name is None:
        name = check_name(folder, "SKILL.md: no `name` in the front matter, and the folder name")
    elif not isinstance(raw_name, str):
        raise bad_request("SKILL.md: `name` in the front matter must be a string.")
    else:
        name = check_name(raw_name.strip(), "SKILL.md: `name`")
    description = meta.get("description")
    if not isinstance(description, str) or not description.strip():
        raise bad_request("SKILL.md: the front matter needs a non-empty `description` string.")
    description = " ".join(description.split())
    if len(description) > DESCRIPTION_MAX:
        raise bad_request(f"SKILL.md: `description` must be at most {DESCRIPTION_MAX} characters.")
    ordered = tuple(files[p] for p in sorted(files))
    return Bundle(name=name, description=description, folder=folder, files=ordered)


def archive_members(archive: bytes) -> list[tuple[str, bytes]]:
    """The stored archive's files, relative to the skill folder (for the console and mounting)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        out = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = check_path(info.filename, "archive")
            out.append(("/".join(parts[1:]), zf.read(info)))
        return out
