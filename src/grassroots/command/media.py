"""Incident photos: checked by their magic bytes, stored on disk under settings.upload_dir,
recorded as IncidentPhoto rows and served back only to people who may see the incident.

A photo goes through two steps. `stage_photos` streams each upload into a temporary file in
upload_dir/.staging while hashing and counting it, and refuses the whole batch (deleting what it
wrote) if one file is too big, not a JPEG/PNG/WebP by its first bytes, or one too many; so a
rejected report stores nothing. `attach_photos` then moves the staged files to their final names
and commits the rows. `discard` deletes staged files that will not be attached (a rejected
report, a repeated submission).
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from fastapi import APIRouter
from fastapi.responses import FileResponse
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from grassroots.command.models import Assignment, Incident, IncidentPhoto, PhotoStage
from grassroots.command.request_deps import CurrentUser, RuntimeDep, SessionDep
from grassroots.command.states import Actor
from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.auth.scope import path_in_scope, scope_path
from grassroots.kernel.errors import NotFound, PermissionDenied, ValidationFailed
from grassroots.kernel.files import fsync_directory

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

MAX_PHOTO_BYTES = 10 * 1024 * 1024  # each photo
MAX_PHOTOS = 6  # per report (or per handled result)
STAGING_DIR = ".staging"
PHOTOS_DIR = "incidents"
# The first chunk doubles as the header we read the image size from: JPEG puts it in a SOF
# segment after the EXIF block (at most 64 KiB per APP segment), so 256 KiB finds it in
# practice, and a photo whose size we miss keeps None.
_CHUNK = 256 * 1024

JPEG, PNG, WEBP = "image/jpeg", "image/png", "image/webp"
EXTENSIONS = {JPEG: "jpg", PNG: "png", WEBP: "webp"}


class Upload(Protocol):
    """What stage_photos needs of an upload (starlette's UploadFile fits)."""

    @property
    def filename(self) -> str | None: ...

    @property
    def file(self) -> IO[bytes]: ...


@dataclass(frozen=True)
class StagedPhoto:
    """A checked photo written to a temporary file, not yet recorded."""

    temp_path: Path
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None
    height: int | None
    original_name: str


# --- recognising images ------------------------------------------------------------------------


def sniff(head: bytes) -> str | None:
    """The image type by its magic bytes (never the client's content type or file name)."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= 16 and head[:4] == b"RIFF" and head[8:12] == b"WEBP" and (
            head[12:15] == b"VP8"):
        return WEBP
    return None


def _png_size(head: bytes) -> tuple[int, int] | None:
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF})
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xDA)})


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return width, height
        if marker == 0xDA or length < 2:  # start of scan: no frame header before it
            return None
        i += 2 + length
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        return (int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1)
    return None


_SIZERS = {JPEG: _jpeg_size, PNG: _png_size, WEBP: _webp_size}


def image_size(content_type: str, head: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header, or None when it is not where we look."""
    try:
        return _SIZERS[content_type](head)
    except (KeyError, struct.error):
        return None


# --- staging -----------------------------------------------------------------------------------


class PhotoRejected(ValidationFailed):
    code = "photo_rejected"


def _root(runtime: Runtime) -> Path:
    return Path(runtime.settings.upload_dir)


def _display_name(upload: Upload, index: int) -> str:
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:60] or f"#{index}"


def _chosen(upload: Upload) -> bool:
    """False for the empty, unnamed part a browser sends when no file was chosen."""
    if upload.filename:
        return True
    upload.file.seek(0)
    return bool(upload.file.read(1))


def _precheck(upload: Upload, index: int) -> None:
    """The cheap checks (type by magic bytes, declared size), before anything is written."""
    name = _display_name(upload, index)
    upload.file.seek(0)
    head = upload.file.read(16)
    if not head:
        raise PhotoRejected("command.photo.empty", name=name)
    if sniff(head) is None:
        raise PhotoRejected("command.photo.bad_type", name=name)
    declared = getattr(upload, "size", None)  # starlette counts the bytes it received
    if isinstance(declared, int) and declared > MAX_PHOTO_BYTES:
        raise PhotoRejected("command.photo.too_big", name=name,
                            limit=MAX_PHOTO_BYTES // (1024 * 1024))


def _stage_one(upload: Upload, index: int, staging: Path) -> StagedPhoto:
    """Check one upload and write it to a temporary file (fsynced)."""
    name = _display_name(upload, index)
    source = upload.file
    source.seek(0)
    first = source.read(_CHUNK)
    if not first:
        raise PhotoRejected("command.photo.empty", name=name)
    head = first  # a whole chunk: as much of the header as we read for the size
    content_type = sniff(head)
    if content_type is None:
        raise PhotoRejected("command.photo.bad_type", name=name)
    digest = hashlib.sha256()
    size = 0
    temp = staging / f"{uuid.uuid4().hex}.part"
    try:
        with open(temp, "xb") as out:
            chunk = first
            while chunk:
                size += len(chunk)
                if size > MAX_PHOTO_BYTES:
                    raise PhotoRejected("command.photo.too_big", name=name,
                                        limit=MAX_PHOTO_BYTES // (1024 * 1024))
                digest.update(chunk)
                out.write(chunk)
                chunk = source.read(_CHUNK)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dimensions = image_size(content_type, head)
    return StagedPhoto(temp_path=temp, content_type=content_type, size_bytes=size,
                       sha256=digest.hexdigest(), width=dimensions[0] if dimensions else None,
                       height=dimensions[1] if dimensions else None, original_name=name)


def stage_photos(*, runtime: Runtime, uploads: Iterable[Upload],
                 max_count: int = MAX_PHOTOS) -> list[StagedPhoto]:
    """Check and stage a batch of uploads; one bad file rejects the batch and leaves nothing."""
    chosen = [upload for upload in uploads if _chosen(upload)]
    if len(chosen) > max_count:
        raise PhotoRejected("command.photo.too_many", limit=max_count)
    for index, upload in enumerate(chosen, start=1):
        _precheck(upload, index)
    staging = _root(runtime) / STAGING_DIR
    staged: list[StagedPhoto] = []
    try:
        for index, upload in enumerate(chosen, start=1):
            staging.mkdir(parents=True, exist_ok=True)
            staged.append(_stage_one(upload, index, staging))
    except BaseException:
        discard(staged)
        raise
    return staged


def discard(staged: Iterable[StagedPhoto]) -> None:
    """Delete staged files that will not be attached."""
    for photo in staged:
        photo.temp_path.unlink(missing_ok=True)


# --- recording ---------------------------------------------------------------------------------


def _final_relative(now: datetime, content_type: str) -> str:
    return f"{PHOTOS_DIR}/{now:%Y/%m}/{uuid.uuid4().hex}.{EXTENSIONS[content_type]}"


def attach_photos(*, session: Session, runtime: Runtime, actor: Actor, incident_id: int,
                  staged: Sequence[StagedPhoto], stage: PhotoStage | str = PhotoStage.REPORT,
                  source_ip: str | None = None) -> list[IncidentPhoto]:
    """Move staged photos to their final names and record them (one transaction, one audit row).

    Order: write the temporary file and fsync it (stage_photos) → rename it to its final name →
    commit the row → on any failure roll back and delete the renamed files and the leftovers.
    We rename before the commit, not after, so that a committed row always points at a
    complete file: if the process dies between the rename and the commit, what is left is a
    file no row names, which nobody can fetch (photos are served only through their row) and
    sweep_orphans deletes; renaming after the commit would instead risk a row whose file never
    arrives. The rename is atomic because staging and final names share upload_dir's
    filesystem.
    """
    if actor.role is not None and not (has_permission(actor.role, Permission.INCIDENTS_REPORT)
                                       or has_permission(actor.role, Permission.INCIDENTS_HANDLE)):
        raise PermissionDenied()
    if not staged:
        return []
    if len(staged) > MAX_PHOTOS:
        discard(staged)
        raise PhotoRejected("command.photo.too_many", limit=MAX_PHOTOS)
    if session.in_transaction() and not (session.new or session.dirty or session.deleted):
        session.commit()  # end a read-only transaction the caller left open
    root = _root(runtime)
    placed: list[Path] = []
    try:
        if session.get(Incident, incident_id) is None:
            raise NotFound()
        now = runtime.clock.now()
        rows = []
        for photo in staged:
            relative = _final_relative(now, photo.content_type)
            final = root / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(photo.temp_path, final)
            placed.append(final)
            rows.append(IncidentPhoto(
                incident_id=incident_id, stage=PhotoStage(stage), stored_path=relative,
                content_type=photo.content_type, size_bytes=photo.size_bytes,
                sha256=photo.sha256, width=photo.width, height=photo.height,
                uploaded_by=actor.username, uploaded_by_id=actor.id, uploaded_at=now))
        for directory in {path.parent for path in placed}:
            fsync_directory(directory)
        session.add_all(rows)
        session.flush()
        record(session, runtime=runtime, actor=actor.username, action="incident:photo:add",
               object_type="incident", object_id=incident_id, source_ip=source_ip,
               detail={"stage": PhotoStage(stage).value,
                       "photos": [{"id": row.id, "sha256": row.sha256, "bytes": row.size_bytes,
                                   "type": row.content_type} for row in rows]})
        session.commit()
    except BaseException:
        session.rollback()
        for path in placed:
            path.unlink(missing_ok=True)
        discard(staged)
        raise
    return rows


# --- clean-up ----------------------------------------------------------------------------------

# A file this old that no row names was left by a crash (a request never takes this long).
ORPHAN_AGE = timedelta(hours=1)
_SWEEP_BATCH = 500


def sweep_orphans(*, session: Session, runtime: Runtime,
                  older_than: timedelta = ORPHAN_AGE) -> list[str]:
    """Delete what a crash left behind: staged files, and photo files no row names.

    Only files older than `older_than` are touched, so an upload in flight is never swept.
    Returns the deleted paths, relative to upload_dir. Safe to run from several workers.
    """
    root = _root(runtime)
    cutoff = (runtime.clock.now() - older_than).timestamp()
    removed: list[str] = []

    def old(path: Path) -> bool:
        try:
            return path.is_file() and path.stat().st_mtime < cutoff
        except FileNotFoundError:  # another worker swept it
            return False

    for path in sorted((root / STAGING_DIR).glob("*.part")):
        if old(path):
            path.unlink(missing_ok=True)
            removed.append(path.relative_to(root).as_posix())
    candidates = [path.relative_to(root).as_posix()
                  for path in sorted((root / PHOTOS_DIR).rglob("*")) if old(path)]
    for start in range(0, len(candidates), _SWEEP_BATCH):
        batch = candidates[start:start + _SWEEP_BATCH]
        known = set(session.scalars(select(IncidentPhoto.stored_path)
                                    .where(IncidentPhoto.stored_path.in_(batch))))
        for relative in batch:
            if relative not in known:
                (root / relative).unlink(missing_ok=True)
                removed.append(relative)
    session.rollback()  # end the read transaction
    return removed


# --- reading -----------------------------------------------------------------------------------


def photos_of(*, session: Session, incident_id: int,
              stage: PhotoStage | None = None) -> list[IncidentPhoto]:
    stmt = select(IncidentPhoto).where(IncidentPhoto.incident_id == incident_id)
    if stage is not None:
        stmt = stmt.where(IncidentPhoto.stage == stage)
    return list(session.scalars(stmt.order_by(IncidentPhoto.id)))


def may_see_incident(*, session: Session, user: User, incident: Incident) -> bool:
    """Within the user's data scope, or reported by them, or they were sent to it."""
    if not has_permission(user.role, Permission.INCIDENTS_READ):
        return False
    if path_in_scope(scope_path(session, user), incident.region_path):
        return True
    if incident.created_by == user.username:
        return True
    return bool(session.scalar(select(exists().where(
        Assignment.incident_id == incident.id, Assignment.user_id == user.id))))


def stored_file(*, runtime: Runtime, photo: IncidentPhoto) -> Path:
    """The photo's file, refusing any stored path that would leave upload_dir."""
    root = _root(runtime).resolve()
    path = (root / photo.stored_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound()
    return path


router = APIRouter(tags=["incidents"])


@router.get("/command/photos/{photo_id}", include_in_schema=False)
def get_photo(photo_id: int, user: CurrentUser, session: SessionDep,
              runtime: RuntimeDep) -> FileResponse:
    """A photo's bytes for someone who may see its incident; 404 for anyone else."""
    photo = session.get(IncidentPhoto, photo_id)
    incident = session.get(Incident, photo.incident_id) if photo is not None else None
    if photo is None or incident is None or not may_see_incident(session=session, user=user,
                                                                 incident=incident):
        raise NotFound()
    return FileResponse(stored_file(runtime=runtime, photo=photo), media_type=photo.content_type,
                        headers={"Cache-Control": "private, max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})
