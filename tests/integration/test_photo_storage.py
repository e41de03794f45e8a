"""Staging, attaching and sweeping incident photos on disk, on both databases."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import ADMIN, load_categories, make_area, report
from tests.web.field_support import jpeg_bytes, png_bytes, stored_files

from grassroots.command import media
from grassroots.command.models import IncidentPhoto, PhotoStage
from grassroots.kernel.errors import NotFound
from grassroots.runtime import Runtime


@dataclass
class FakeUpload:
    filename: str | None
    file: io.BytesIO


def uploads(*items: tuple[str | None, bytes]) -> list[FakeUpload]:
    return [FakeUpload(name, io.BytesIO(content)) for name, content in items]


def test_an_empty_unnamed_part_is_no_photo_but_an_empty_named_file_is_refused(
    runtime: Runtime
) -> None:
    staged = media.stage_photos(runtime=runtime, uploads=uploads((None, b""), ("", b"")))
    assert staged == []
    with pytest.raises(media.PhotoRejected) as refused:
        media.stage_photos(runtime=runtime, uploads=uploads(("a.jpg", jpeg_bytes()),
                                                            ("empty.jpg", b"")))
    assert refused.value.message_id == "command.photo.empty"
    assert stored_files(Path(runtime.settings.upload_dir)) == []


def test_attaching_to_a_missing_incident_leaves_no_file(runtime: Runtime,
                                                        session: Session) -> None:
    staged = media.stage_photos(runtime=runtime, uploads=uploads(("a.png", png_bytes())))
    assert len(stored_files(Path(runtime.settings.upload_dir))) == 1
    with pytest.raises(NotFound):
        media.attach_photos(session=session, runtime=runtime, actor=ADMIN, incident_id=999,
                            staged=staged)
    assert stored_files(Path(runtime.settings.upload_dir)) == []


def test_the_sweep_deletes_only_old_files_that_no_row_names(
    runtime: Runtime, session: Session
) -> None:
    load_categories(session, runtime)
    incident = report(session, runtime, make_area(session)).incident
    staged = media.stage_photos(runtime=runtime, uploads=uploads(("a.jpg", jpeg_bytes())))
    [photo] = media.attach_photos(session=session, runtime=runtime, actor=ADMIN,
                                  incident_id=incident.id, staged=staged,
                                  stage=PhotoStage.RESULT)
    root = Path(runtime.settings.upload_dir)
    kept = root / photo.stored_path
    crashed_rename = kept.parent / "0123abcd.jpg"  # renamed, then the commit never came
    crashed_rename.write_bytes(jpeg_bytes())
    crashed_stage = media.stage_photos(runtime=runtime, uploads=uploads(("b.png", png_bytes())))
    in_flight = media.stage_photos(runtime=runtime, uploads=uploads(("c.png", png_bytes())))
    long_ago = (runtime.clock.now() - timedelta(hours=2)).timestamp()
    for path in (kept, crashed_rename, crashed_stage[0].temp_path):
        os.utime(path, (long_ago, long_ago))
    recent = runtime.clock.now().timestamp()
    os.utime(in_flight[0].temp_path, (recent, recent))

    removed = media.sweep_orphans(session=session, runtime=runtime)

    assert sorted(removed) == sorted([
        crashed_rename.relative_to(root).as_posix(),
        crashed_stage[0].temp_path.relative_to(root).as_posix()])
    assert kept.read_bytes() == jpeg_bytes()
    assert in_flight[0].temp_path.exists()
    assert session.scalar(sa.select(sa.func.count()).select_from(IncidentPhoto)) == 1
