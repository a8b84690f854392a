"""Wire shapes of files (spec 15) and session resources (spec 6), named after the SDK's types."""

from typing import Annotated, Literal

from ninja import Schema
from pydantic import Field


class FileScope(Schema):
    type: Literal["session"]
    id: str


class FileMetadata(Schema):
    id: str
    type: Literal["file"]
    filename: str
    mime_type: str
    size_bytes: int
    created_at: str
    downloadable: bool
    expires_at: str | None
    scope: FileScope | None


class FileList(Schema):
    data: list[FileMetadata]
    next_page: str | None


class DeletedFile(Schema):
    id: str
    type: Literal["file_deleted"]


class BranchCheckout(Schema):
    type: Literal["branch"]
    name: str


class CommitCheckout(Schema):
    type: Literal["commit"]
    sha: str


Checkout = Annotated[BranchCheckout | CommitCheckout, Field(discriminator="type")]


class SessionResourceParams(Schema):
    """What `POST .../resources` accepts; the service checks each type's fields and names the bad one."""

    type: Literal["file", "github_repository", "memory_store"]
    file_id: str | None = None
    url: str | None = None
    authorization_token: str | None = None
    checkout: Checkout | None = None
    mount_path: str | None = None


class SessionResourceUpdateParams(Schema):
    authorization_token: str


class FileResource(Schema):
    id: str
    type: Literal["file"]
    file_id: str
    mount_path: str
    created_at: str
    updated_at: str


class GitHubRepositoryResource(Schema):
    id: str
    type: Literal["github_repository"]
    url: str
    mount_path: str
    checkout: Checkout | None
    created_at: str
    updated_at: str


SessionResource = Annotated[FileResource | GitHubRepositoryResource, Field(discriminator="type")]


class SessionResourceList(Schema):
    data: list[SessionResource]
    next_page: str | None


class DeletedSessionResource(Schema):
    id: str
    type: Literal["session_resource_deleted"]
