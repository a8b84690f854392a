"""The Skills API through the official SDK, with strict response validation, against a live server."""

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.lib import files_from_dir

from tests.live import LiveGalley, live_galley

SKILL_MD = b"""---
name: field-notes
description: Turns raw field observations into a tidy, dated notes table.
---
# Field notes

Run `python3 scripts/tidy.py notes.txt` and read its output.
"""
TIDY = b"import sys\nprint(sorted(open(sys.argv[1]).read().split()))\n"


@pytest.fixture(scope="module")
def galley() -> Iterator[LiveGalley]:
    with live_galley(worker=False) as server:
        yield server


@pytest.fixture
def client(galley: LiveGalley) -> anthropic.Anthropic:
    return galley.client()


def _folder(tmp_path: Path, name: str = "field-notes", skill_md: bytes = SKILL_MD) -> Path:
    root = tmp_path / name
    (root / "scripts").mkdir(parents=True)
    (root / "SKILL.md").write_bytes(skill_md)
    (root / "scripts" / "tidy.py").write_bytes(TIDY)
    return root


def _zip(entries: dict[str, bytes], **kwargs: object) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}


def _skill_names(client: anthropic.Anthropic) -> set[str]:
    return {s.display_name for s in client.beta.skills.list(source="custom", limit=1000)}


def test_a_folder_upload_round_trips_through_versions_and_content(
    client: anthropic.Anthropic, tmp_path: Path
) -> None:
    folder = _folder(tmp_path)
    skill = client.beta.skills.create(files=files_from_dir(folder), display_name="Field notes")
    assert skill.id.startswith("skill_")
    assert skill.source.type == "custom"
    assert skill.display_name == "Field notes"

    first = client.beta.skills.versions.retrieve("latest", skill_id=skill.id)
    assert first.id == skill.latest_version_id
    assert (first.name, first.skill_id) == ("field-notes", skill.id)
    assert first.description == "Turns raw field observations into a tidy, dated notes table."

    content = client.beta.skills.versions.download(first.id, skill_id=skill.id).read()
    assert _unzip(content) == {"field-notes/SKILL.md": SKILL_MD, "field-notes/scripts/tidy.py": TIDY}

    changed = SKILL_MD.replace(b"tidy, dated", b"sorted")
    (folder / "SKILL.md").write_bytes(changed)
    second = client.beta.skills.versions.create(skill.id, files=files_from_dir(folder))
    assert second.id != first.id and second.description.endswith("sorted notes table.")
    assert client.beta.skills.retrieve(skill.id).latest_version_id == second.id
    assert client.beta.skills.versions.retrieve("latest", skill_id=skill.id).id == second.id
    assert (
        _unzip(client.beta.skills.versions.download("latest", skill_id=skill.id).read())[
            "field-notes/SKILL.md"
        ]
        == changed
    )
    # The first version is unchanged.
    assert client.beta.skills.versions.download(first.id, skill_id=skill.id).read() == content

    listed = [v.id for v in client.beta.skills.versions.list(skill.id, limit=1)]
    assert listed == [second.id, first.id]

    deleted = client.beta.skills.versions.delete(second.id, skill_id=skill.id)
    assert (deleted.id, deleted.type) == (second.id, "skill_version_deleted")
    assert client.beta.skills.retrieve(skill.id).latest_version_id == first.id
    with pytest.raises(anthropic.BadRequestError, match="only version"):
        client.beta.skills.versions.delete(first.id, skill_id=skill.id)

    gone = client.beta.skills.delete(skill.id)
    assert (gone.id, gone.type) == (skill.id, "skill_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.skills.retrieve(skill.id)


def test_a_zip_upload_and_the_name_rules(client: anthropic.Anthropic) -> None:
    archive = _zip(
        {
            "__MACOSX/._SKILL.md": b"junk",
            "Weekly Report/SKILL.md": b"---\nname: weekly-report\ndescription: Weekly.\n---\n",
            "Weekly Report/template.md": b"# Week {n}\n",
        }
    )
    skill = client.beta.skills.create(files=[("weekly.zip", archive, "application/zip")])
    assert skill.display_name == "weekly-report"  # from the front matter when not given
    files = _unzip(client.beta.skills.versions.download("latest", skill_id=skill.id).read())
    assert set(files) == {"weekly-report/SKILL.md", "weekly-report/template.md"}

    with pytest.raises(anthropic.ConflictError) as taken:
        client.beta.skills.create(files=[("weekly.zip", archive, "application/zip")])
    assert taken.value.body["error"]["details"]["error_code"] == "skill_name_taken"

    other = b"---\nname: monthly-report\ndescription: Something else.\n---\n"
    with pytest.raises(anthropic.BadRequestError, match="keeps its name"):
        client.beta.skills.versions.create(skill.id, files=[("weekly-report/SKILL.md", other)])

    with pytest.raises(anthropic.ConflictError):
        client.beta.skills.create(files=[("x/SKILL.md", b"---\nname: xlsx\ndescription: mine\n---\n")])


def test_listing_filters_by_source_and_pages(client: anthropic.Anthropic) -> None:
    for n in range(3):
        md = f"---\nname: pager-{n}\ndescription: Page test {n}.\n---\n".encode()
        client.beta.skills.create(files=[(f"pager-{n}/SKILL.md", md)])
    anthropic_skills = client.beta.skills.list(source="anthropic")
    assert sorted(s.id for s in anthropic_skills.data) == ["docx", "pdf", "pptx", "xlsx"]
    assert all(s.source.type == "anthropic" for s in anthropic_skills.data)
    custom = list(client.beta.skills.list(source="custom", limit=2))
    assert {"pager-0", "pager-1", "pager-2"} <= {s.display_name for s in custom}
    assert all(s.source.type == "custom" for s in custom)
    everything = list(client.beta.skills.list(limit=3))
    assert len({s.id for s in everything}) == len(everything) == 4 + len(custom)
    with pytest.raises(anthropic.BadRequestError, match="source"):
        client.beta.skills.list(source="plugin")


def test_builtin_skills_are_served_read_only(client: anthropic.Anthropic) -> None:
    xlsx = client.beta.skills.retrieve("xlsx")
    assert xlsx.source.type == "anthropic"
    version = client.beta.skills.versions.retrieve("latest", skill_id="xlsx")
    assert version.id == xlsx.latest_version_id and version.name == "xlsx"
    files = _unzip(client.beta.skills.versions.download(version.id, skill_id="xlsx").read())
    assert "xlsx/SKILL.md" in files
    with pytest.raises(anthropic.BadRequestError):
        client.beta.skills.delete("xlsx")
    with pytest.raises(anthropic.BadRequestError):
        client.beta.skills.versions.create("xlsx", files=[("xlsx/SKILL.md", b"---\nname: xlsx\n---\n")])


# --- bad input: a clear 4xx naming the problem, and nothing stored ----------------------------------------


def _refused(client: anthropic.Anthropic, files: list, status: type, match: str) -> None:
    before = _skill_names(client)
    with pytest.raises(status, match=match):
        client.beta.skills.create(files=files)
    assert _skill_names(client) == before


def test_a_zip_bomb_is_refused(client: anthropic.Anthropic) -> None:
    bomb = _zip(
        {"bomb/SKILL.md": b"---\nname: bomb\ndescription: b\n---\n", "bomb/zeros.bin": bytes(9_000_000)}
    )
    assert len(bomb) < 20_000
    _refused(client, [("bomb.zip", bomb, "application/zip")], anthropic.BadRequestError, "zip bomb")


def test_a_path_escaping_the_folder_is_refused(client: anthropic.Anthropic) -> None:
    md = b"---\nname: escape\ndescription: e\n---\n"
    _refused(
        client, [("escape/SKILL.md", md), ("escape/../etc/x", b"x")], anthropic.BadRequestError, r"'\.\.'"
    )
    _refused(client, [("/abs/SKILL.md", md)], anthropic.BadRequestError, "absolute")
    evil = _zip({"escape/SKILL.md": md, "escape/../../x": b"x"})
    _refused(client, [("e.zip", evil, "application/zip")], anthropic.BadRequestError, "escapes")
    _refused(client, [("a/SKILL.md", md), ("b/x.txt", b"x")], anthropic.BadRequestError, "one top-level")


def test_a_symlink_in_a_zip_is_refused(client: anthropic.Anthropic) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("link/SKILL.md", b"---\nname: link\ndescription: l\n---\n")
        info = zipfile.ZipInfo("link/passwd")
        info.create_system = 3
        info.external_attr = (0o120777) << 16
        zf.writestr(info, b"/etc/passwd")
    _refused(
        client, [("l.zip", buf.getvalue(), "application/zip")], anthropic.BadRequestError, "symbolic link"
    )


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ([("nomd/README.md", b"hello")], "SKILL.md is missing"),
        ([("nofm/SKILL.md", b"# no front matter\n")], "front matter"),
        ([("open/SKILL.md", b"---\nname: open\n")], "closing"),
        ([("yaml/SKILL.md", b"---\nname: [unclosed\n---\n")], "not valid YAML"),
        ([("nodesc/SKILL.md", b"---\nname: nodesc\n---\n")], "description"),
        ([("badname/SKILL.md", b"---\nname: Bad Name\ndescription: d\n---\n")], "not a skill name"),
        ([("SKILL.md", b"---\nname: top\ndescription: d\n---\n")], "not inside a folder"),
        ([("x.zip", b"not a zip", "application/zip")], "not a valid zip"),
    ],
)
def test_a_missing_or_malformed_skill_md_is_refused(
    client: anthropic.Anthropic, files: list, match: str
) -> None:
    _refused(client, files, anthropic.BadRequestError, match)


def test_an_oversized_upload_is_refused() -> None:
    small = {
        "GALLEY_SKILL_MAX_BYTES": "200000",
        "GALLEY_SKILL_MAX_FILE_BYTES": "100000",
        "GALLEY_SKILL_MAX_FILES": "3",
    }
    md = b"---\nname: big\ndescription: d\n---\n"
    with live_galley(small, worker=False) as server:
        client = server.client()
        with pytest.raises(anthropic.APIStatusError, match="per file") as one:
            client.beta.skills.create(files=[("big/SKILL.md", md), ("big/a.bin", bytes(150_000))])
        assert one.value.status_code == 413
        with pytest.raises(anthropic.APIStatusError, match="limit") as body:
            client.beta.skills.create(files=[("big/SKILL.md", md), ("big/a.bin", bytes(1_500_000))])
        assert body.value.status_code == 413
        many = [("big/SKILL.md", md)] + [(f"big/{i}.txt", b"x") for i in range(4)]
        with pytest.raises(anthropic.APIStatusError, match="3 files") as count:
            client.beta.skills.create(files=many)
        assert count.value.status_code == 413
        assert list(client.beta.skills.list(source="custom")) == []


def test_the_sdks_own_skill_downloader_fetches_a_sessions_skills(galley: LiveGalley, tmp_path: Path) -> None:
    """`anthropic.lib.tools` downloads a session agent's skills the way a self-hosted worker does."""
    import asyncio

    from anthropic.lib.tools._skills import download_session_skills

    client = galley.client()
    md = b"---\nname: downloaded\ndescription: Fetched by the SDK.\n---\n"
    skill = client.beta.skills.create(
        files=[("downloaded/SKILL.md", md), ("downloaded/bin/run.sh", b"echo hi\n")]
    )
    agent = client.beta.agents.create(
        name="downloader",
        model="claude-sonnet-4-6",
        skills=[{"type": "anthropic", "skill_id": "pdf"}, {"type": "custom", "skill_id": skill.id}],
    )
    environment = client.beta.environments.create(name="downloader-env")
    session_id = client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id

    async def fetch() -> list[Path]:
        async with anthropic.AsyncAnthropic(
            base_url=galley.base_url, api_key=galley.api_key, max_retries=0, _strict_response_validation=True
        ) as aclient:
            session = await aclient.beta.sessions.retrieve(session_id)
            return await download_session_skills(aclient, workdir=tmp_path, session=session)

    dirs = asyncio.run(fetch())
    assert sorted(d.name for d in dirs) == ["downloaded", "pdf"]
    assert (tmp_path / "skills" / "downloaded" / "SKILL.md").read_bytes() == md
    assert (tmp_path / "skills" / "downloaded" / "bin" / "run.sh").read_bytes() == b"echo hi\n"
    assert (tmp_path / "skills" / "pdf" / "scripts" / "pdf_tool.py").is_file()
