"""Readers for the layered files the pack writes, independent of the writers: PSD parsed by hand
from Adobe's file format (header, layer records, RLE channel data, merged image), OpenRaster from
its zip, its stack.xml and pypng (a pure-Python PNG decoder, not Pillow). And the real RGBA test
image: a soft-alpha PNG that ships with matplotlib."""

from __future__ import annotations

import dataclasses
import struct
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class ReadLayer:
    name: str
    visible: bool
    pixels: np.ndarray  # [H, W, 4] uint8
    blend: str = ""  # as the file names it: a PSD blend mode key ("norm", "mul "), an ORA composite-op ("svg:multiply")


def real_rgba() -> np.ndarray:
    """matplotlib's sample image Minduka_Present_Blue_Pack.png: 128x128 RGBA with partial alpha."""
    import matplotlib
    import png

    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "Minduka_Present_Blue_Pack.png"
    width, height, rows, _ = png.Reader(filename=str(path)).asRGBA8()
    return np.array([list(row) for row in rows], dtype=np.uint8).reshape(height, width, 4)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.at:self.at + n]
        if len(out) != n:
            raise ValueError("truncated PSD")
        self.at += n
        return out

    def unpack(self, fmt: str):
        values = struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt)))
        return values[0] if len(values) == 1 else values


def _unpackbits(data: bytes, size: int) -> bytes:
    out, i = bytearray(), 0
    while len(out) < size:
        n = data[i] - 256 if data[i] > 127 else data[i]
        i += 1
        if n >= 0:
            out += data[i:i + n + 1]
            i += n + 1
        elif n != -128:
            out += data[i:i + 1] * (1 - n)
            i += 1
    return bytes(out[:size])


def _channel(stream: _Bytes, height: int, width: int, compression: int | None = None) -> np.ndarray:
    if compression is None:
        compression = stream.unpack("H")
    if compression == 0:
        return np.frombuffer(stream.take(height * width), np.uint8).reshape(height, width)
    if compression != 1:
        raise ValueError(f"PSD channel compression {compression} is not raw or RLE")
    counts = [stream.unpack("H") for _ in range(height)]
    rows = [_unpackbits(stream.take(c), width) for c in counts]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(height, width)


def read_psd(path: str | Path) -> tuple[list[ReadLayer], np.ndarray, tuple[int, int]]:
    """(layers bottom first, the merged image [H, W, C], (height, width)) of an 8-bit RGB(A) PSD."""
    s = _Bytes(Path(path).read_bytes())
    signature, version = s.take(4), s.unpack("H")
    assert signature == b"8BPS" and version == 1, (signature, version)
    s.take(6)
    channels, height, width, depth, mode = s.unpack("HIIHH")
    assert depth == 8 and mode == 3, (depth, mode)  # 8 bits, RGB colour mode
    s.take(s.unpack("I"))  # colour mode data
    s.take(s.unpack("I"))  # image resources
    section_end = s.unpack("I") + s.at
    info_end = s.unpack("I") + s.at
    count = abs(s.unpack("h"))
    records = []
    for _ in range(count):
        top, left, bottom, right = s.unpack("iiii")
        channel_ids = [s.unpack("hI")[0] for _ in range(s.unpack("H"))]
        assert s.take(4) == b"8BIM"
        blend = s.take(4).decode("latin-1")  # blend mode key
        _opacity, _clipping, flags, _filler = s.unpack("BBBB")
        extra_end = s.unpack("I") + s.at
        s.take(s.unpack("I"))  # layer mask data
        s.take(s.unpack("I"))  # blending ranges
        name_length = s.unpack("B")
        name = s.take(name_length).decode("latin-1")
        s.take((-(1 + name_length)) % 4)
        s.at = extra_end
        records.append((name, not flags & 0x02, (top, left, bottom, right), channel_ids, blend))
    layers = []
    for name, visible, (top, left, bottom, right), channel_ids, blend in records:
        h, w = bottom - top, right - left
        planes = {cid: _channel(s, h, w) for cid in channel_ids}
        pixels = np.zeros((height, width, 4), np.uint8)
        pixels[top:bottom, left:right] = np.stack([planes[0], planes[1], planes[2], planes.get(-1, np.full((h, w), 255, np.uint8))], -1)
        layers.append(ReadLayer(name, visible, pixels, blend))
    assert s.at <= info_end <= section_end
    s.at = section_end
    compression = s.unpack("H")
    if compression == 1:  # the merged image: all channels' row counts first, then the rows
        counts = [s.unpack("H") for _ in range(channels * height)]
        data = [_unpackbits(s.take(c), width) for c in counts]
        planes = [np.frombuffer(b"".join(data[c * height:(c + 1) * height]), np.uint8).reshape(height, width) for c in range(channels)]
    else:
        planes = [_channel(s, height, width, 0) for _ in range(channels)]
    return layers, np.stack(planes, -1), (height, width)


def png_pixels(data: bytes | Path) -> np.ndarray:
    """A PNG (its bytes or its path) as ``[H, W, 4]`` uint8, decoded by pypng."""
    import png

    reader = png.Reader(filename=str(data)) if isinstance(data, Path) else png.Reader(bytes=data)
    width, height, rows, _ = reader.asRGBA8()
    return np.array([list(row) for row in rows], dtype=np.uint8).reshape(height, width, 4)


def read_ora(path: str | Path) -> tuple[list[ReadLayer], np.ndarray, tuple[int, int]]:
    """(layers bottom first, mergedimage.png [H, W, 4], (height, width)) of an OpenRaster file,
    checking the container's own rules (mimetype first and stored, thumbnail present)."""
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        assert "Thumbnails/thumbnail.png" in archive.namelist()
        image = ET.fromstring(archive.read("stack.xml"))
        height, width = int(image.get("h")), int(image.get("w"))
        layers = []
        for entry in image.find("stack").findall("layer"):
            pixels = np.zeros((height, width, 4), np.uint8)
            layer = png_pixels(archive.read(entry.get("src")))
            x, y = int(entry.get("x", 0)), int(entry.get("y", 0))
            pixels[y:y + layer.shape[0], x:x + layer.shape[1]] = layer
            layers.append(ReadLayer(entry.get("name"), entry.get("visibility", "visible") == "visible", pixels,
                                    entry.get("composite-op", "svg:src-over")))
        merged = png_pixels(archive.read("mergedimage.png"))
    return layers[::-1], merged, (height, width)  # stack.xml lists the top layer first


READERS = {"psd": read_psd, "ora": read_ora}


def real_objects() -> np.ndarray:
    """Two objects of one layered set, bottom first, ``[2, 128, 128, 4]`` uint8: `real_rgba`, and it
    moved 40 pixels right and 24 down (cut at the edges, not wrapped) with its colours rotated, so the
    second covers part of the first, soft edges over soft edges included."""
    first = real_rgba()
    second = np.zeros_like(first)
    second[24:, 40:] = first[:-24, :-40][..., [2, 0, 1, 3]]
    return np.stack([first, second])
