"""OpenAI's Files API objects: the file, a page of files, the deletion receipt."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

FilePurpose = Literal["batch", "user_data", "assistants", "vision"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"  # validated at upload: ready at once
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
