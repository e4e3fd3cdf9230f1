"""The Files API: POST/GET /v1/files, GET/DELETE /v1/files/{file_id}, GET …/content."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from server.api.deps import FilesService
from server.protocol.files import FileDeleted, FileList, FileObject, FilePurpose

router = APIRouter()


@router.post("/v1/files")
async def upload_file(
    files: FilesService,
    file: Annotated[UploadFile, File(description="the file (multipart/form-data)")],
    purpose: Annotated[FilePurpose, Form()],
) -> FileObject:
    return await files.upload(file.file, filename=file.filename or "upload", purpose=purpose)


@router.get("/v1/files")
async def list_files(
    files: FilesService,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    return await files.list(purpose=purpose, limit=limit, after=after, order=order)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, files: FilesService) -> FileObject:
    return await files.get(file_id)


@router.get("/v1/files/{file_id}/content", response_class=FileResponse)
async def file_content(file_id: str, files: FilesService) -> FileResponse:
    stored, path = await files.content_path(file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=stored.filename)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, files: FilesService) -> FileDeleted:
    return await files.delete(file_id)
