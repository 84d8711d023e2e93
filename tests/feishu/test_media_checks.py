"""Pure checks for resources: image sniffing and validation, file names, paths, file types."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feishu_bot.errors import AttachmentError
from feishu_bot.feishu.media_checks import (
    MAX_NAME_BYTES,
    MAX_NAME_CHARS,
    OutboundFileError,
    check_image,
    file_type_for,
    resolve_inside,
    sanitize_name,
    sniff_image,
)
from feishu_bot.simulator.media import sample_gif, sample_jpeg, sample_png, sample_webp

SAMPLES = {
    "image/png": sample_png(),
    "image/jpeg": sample_jpeg(),
    "image/gif": sample_gif(),
    "image/webp": sample_webp(),
}


@pytest.mark.parametrize("media_type", sorted(SAMPLES))
def test_complete_images_pass_with_their_media_type(media_type: str) -> None:
    data = SAMPLES[media_type]
    assert sniff_image(data) == media_type
    assert check_image(data) == media_type


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"%PDF-1.7\n...", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"BM"],
)
def test_non_images_are_refused_with_a_reason(data: bytes) -> None:
    assert sniff_image(data) is None
    with pytest.raises(AttachmentError) as info:
        check_image(data, label="The screenshot")
    assert info.value.reason == "not_image"
    assert str(info.value).startswith("The screenshot is not a PNG, JPEG, GIF or WebP image")


@pytest.mark.parametrize(
    "data",
    [
        sample_png(64, 64)[:200],  # truncated inside IDAT (the CLI would pass it on untouched)
        sample_png()[:-12],  # IEND missing
        b"\x89PNG\r\n\x1a\n" + b"x" * 100,  # magic only
        sample_jpeg()[:-2],  # no EOI
        b"\xff\xd8\xff\xe0" + b"\x00" * 10,
        sample_gif()[:-1],  # no trailer
        sample_webp()[:20],
    ],
)
def test_damaged_images_are_refused(data: bytes) -> None:
    with pytest.raises(AttachmentError) as info:
        check_image(data)
    assert info.value.reason == "not_image"
    assert "damaged or incomplete" in str(info.value)


def test_png_with_zero_width_is_refused() -> None:
    data = bytearray(sample_png())
    data[16:20] = b"\x00\x00\x00\x00"  # IHDR width
    with pytest.raises(AttachmentError):
        check_image(bytes(data))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "fallback"),
        (".", "fallback"),
        ("...hidden", "hidden"),
        ("a/b\\c", "a_b_c"),
        ("bad\x00name\x07.txt", "badname.txt"),
        ("new\nline.txt", "newline.txt"),
        ("  spaced  ", "spaced"),
        ("", "fallback"),
        ("报告 2026.docx", "报告 2026.docx"),
        ('a:b*c?"d<e>f|g', "a_b_c__d_e_f_g"),
        ("\u202eevil.txt", "evil.txt"),  # a bidi override is a format (C) character
    ],
)
def test_sanitize_name(raw: str, expected: str) -> None:
    assert sanitize_name(raw, fallback="fallback") == expected


def test_sanitize_name_caps_length_and_keeps_the_extension() -> None:
    name = sanitize_name("x" * 500 + ".tar.gz", fallback="f")
    assert len(name) == MAX_NAME_CHARS
    assert name.endswith(".gz")
    assert sanitize_name("y" * 500, fallback="f") == "y" * MAX_NAME_CHARS


def test_resolve_inside_accepts_files_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "plot.png"
    target.write_bytes(b"x")
    assert resolve_inside(tmp_path, "out/plot.png") == target.resolve()
    assert resolve_inside(tmp_path, "./out/../out/plot.png") == target.resolve()
    assert resolve_inside(tmp_path, str(target)) == target.resolve()  # absolute but inside


def test_resolve_inside_refuses_escapes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside"
    outside.write_text("secret")
    (work / "link").symlink_to(outside)
    (work / "dirlink").symlink_to(tmp_path)
    for rel in ("../outside", "link", "dirlink/outside", str(outside)):
        with pytest.raises(OutboundFileError, match="only files inside"):
            resolve_inside(work, rel)


def test_resolve_inside_refuses_missing_directories_and_bad_input(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutboundFileError, match="no such file"):
        resolve_inside(tmp_path, "missing.txt")
    with pytest.raises(OutboundFileError, match="not a regular file"):
        resolve_inside(tmp_path, "sub")
    with pytest.raises(OutboundFileError, match="non-empty"):
        resolve_inside(tmp_path, "  ")
    with pytest.raises(OutboundFileError, match="NUL"):
        resolve_inside(tmp_path, "a\x00b")
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(OutboundFileError):
        resolve_inside(tmp_path, "loop")


@pytest.mark.parametrize(
    ("name", "file_type"),
    [
        ("a.pdf", "pdf"),
        ("A.DOCX", "doc"),
        ("b.xlsx", "xls"),
        ("c.ppt", "ppt"),
        ("fix.patch", "stream"),
        ("clip.mp4", "stream"),
        ("noext", "stream"),
    ],
)
def test_file_type_for(name: str, file_type: str) -> None:
    assert file_type_for(name) == file_type


def test_sanitize_name_cuts_by_utf8_bytes_keeping_the_extension_and_whole_characters() -> None:
    """Regression (safe controls #11): 94 Chinese characters (274 bytes) passed the
    character cap and the file system refused the name (255 bytes at most)."""
    raw = "季度销售数据分析报告" * 9 + "最终版.xlsx"
    name = sanitize_name(raw, fallback="f")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.endswith(".xlsx") and name.startswith("季度销售")
    assert name.encode().decode() == name  # no character cut in half
    assert raw.startswith(name.removesuffix(".xlsx"))
    long_no_ext = sanitize_name("数" * 100, fallback="f")
    assert len(long_no_ext.encode()) <= MAX_NAME_BYTES and set(long_no_ext) == {"数"}
