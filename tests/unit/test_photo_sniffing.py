"""Recognising photos by their magic bytes and reading their size from the header."""

from __future__ import annotations

import pytest
from tests.web.field_support import jpeg_bytes, png_bytes, webp_bytes

from grassroots.command.media import JPEG, PNG, WEBP, image_size, sniff


@pytest.mark.parametrize(("content", "kind", "size"), [
    (jpeg_bytes(4032, 3024), JPEG, (4032, 3024)),
    (png_bytes(17, 9), PNG, (17, 9)),
    (webp_bytes(800, 600), WEBP, (800, 600)),
])
def test_jpeg_png_and_webp_are_recognised_with_their_size(
    content: bytes, kind: str, size: tuple[int, int]
) -> None:
    assert sniff(content) == kind
    assert image_size(kind, content) == size


@pytest.mark.parametrize("content", [
    b"",
    b"just text pretending to be a photo",
    b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
    b"GIF89a\x01\x00\x01\x00",
    b"RIFF\x10\x00\x00\x00WAVEfmt ",  # a RIFF that is not WebP
    b"\x89PNG\r\n",  # a truncated signature
    b"%PDF-1.7",
])
def test_anything_else_is_not_an_image(content: bytes) -> None:
    assert sniff(content) is None


def test_a_jpeg_whose_frame_header_is_out_of_reach_has_no_size() -> None:
    exif = b"\xff\xe1\xff\xff" + b"\x00" * 100  # an APP1 segment longer than what we read
    assert image_size(JPEG, b"\xff\xd8" + exif) is None
    assert image_size(JPEG, b"\xff\xd8\xff\xda\x00\x0c") is None  # scan before any frame


def test_the_lossy_and_lossless_webp_headers_give_their_size() -> None:
    lossy = (b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00" + b"\x00\x00\x00"
             + b"\x9d\x01\x2a" + (320).to_bytes(2, "little") + (240).to_bytes(2, "little"))
    assert image_size(WEBP, lossy) == (320, 240)
    bits = (100 - 1) | ((50 - 1) << 14)
    lossless = (b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f"
                + bits.to_bytes(4, "little"))
    assert image_size(WEBP, lossless) == (100, 50)
