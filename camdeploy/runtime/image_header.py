"""Image dimensions from the file header, without decoding: to refuse an image too large to decode
before a single pixel is allocated, and to choose a reduced JPEG decode.

Handles the formats camdeploy reads (JPEG, PNG, BMP, WebP, TIFF, PPM/PGM); returns None for
anything else or for a header it cannot read, and the caller then decodes and checks afterwards.
Sizes are as stored, before any EXIF orientation.
"""

from __future__ import annotations

import struct

# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic...).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[offset:offset + 2])[0]
    found: dict[int, int] = {}
    for i in range(count):
        entry = offset + 2 + 12 * i
        if entry + 12 > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            code, size = ("H", 2) if kind == 3 else ("I", 4)
            found[tag] = struct.unpack(order + code, data[entry + 8:entry + 8 + size])[0]
    return (found[256], found[257]) if 256 in found and 257 in found else None


def _netpbm(data: bytes) -> tuple[int, int] | None:
    fields: list[int] = []
    for line in data[2:256].split(b"\n"):
        for word in line.split(b"#", 1)[0].split():
            if not word.isdigit():
                return None
            fields.append(int(word))
            if len(fields) == 2:
                return fields[0], fields[1]
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of encoded image bytes, or None if unknown."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                width, height = struct.unpack("<HH", data[26:30])
                return width & 0x3FFF, height & 0x3FFF
            if chunk == b"VP8L":
                bits = struct.unpack("<I", data[21:25])[0]
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(data)
        if data[:1] == b"P" and data[1:2] in b"123456":
            return _netpbm(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None
