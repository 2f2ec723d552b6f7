"""Hand-written PNG files for the bad-input tests: palette images and a cheap decompression bomb.

Written with zlib and struct only, so the tests do not depend on an imaging library's encoder
choices. Not a test module (no ``test_`` prefix); imported by the robustness tests.
"""

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY, RGB, PALETTE, GREY_ALPHA, RGBA = 0, 2, 3, 4, 6


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(pixels, color_type: int = GREY, palette=None) -> bytes:
    """Encodes a uint8 array as a PNG (filter 0 on every row, no interlacing).

    Args:
        pixels: ``(H, W)`` uint8 (grey or palette indices) or ``(H, W, C)`` uint8 in RGB(A) order.
        color_type: PNG colour type (``GREY``, ``RGB``, ``PALETTE``, ``GREY_ALPHA``, ``RGBA``).
        palette: for ``PALETTE``, a list of ``(r, g, b)`` entries.
    """
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    body = chunk(b"IHDR", header)
    if palette is not None:
        body += chunk(b"PLTE", bytes(v for entry in palette for v in entry))
    return SIGNATURE + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bomb_bytes(width: int = 20000, height: int = 20000, rows_per_block: int = 500) -> bytes:
    """A valid all-black grey PNG of `width` x `height` pixels in a few hundred kilobytes.

    Built in about 0.2 s without ever holding the image: one block of zero rows is deflated with
    a full flush (which resets the compressor's history), so the compressed block can be
    repeated; the zlib trailer's Adler-32 of ``n`` zero bytes is ``(n mod 65521) << 16 | 1``.
    Decoding it would take ``width * height`` bytes (400 MB by default).
    """
    if height % rows_per_block:
        raise ValueError(f"Expected height divisible by {rows_per_block}; received {height}.")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib framing is added below
    block = compressor.compress(bytes(width + 1) * rows_per_block) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush()
    n_bytes = (width + 1) * height
    stream = (
        b"\x78\xda"
        + block * (height // rows_per_block)
        + final
        + struct.pack(">I", ((n_bytes % 65521) << 16) | 1)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, GREY, 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
