"""Reading image and mask files: header checks before decoding, grey conversion, resizing, mask decoding.

Arrays out, in the conventions of busi-unet: an image ``(H, W, 1) float32 in [0, 1]`` (grey
levels / 255, area-resized), a mask ``(H, W, 1) uint8 in {0, 1}`` (all masks of an image merged
by maximum, then nearest-neighbour resized). A file that cannot be used is refused with a
ValueError that names it and says what is wrong; `png_file_problem` and `image_file_problem`
say so without raising.

Formats, recognised by their first bytes, not by their names (`file_format`): masks and BUSI are
PNG (`read_png`); images may also be TIFF or DICOM, as clinics export them (`read_image_file`,
which also reads JPEG and BMP). Every decoded image comes as OpenCV decodes: ``(H, W)`` grey or
``(H, W, 3|4)`` BGR(A), uint8 or uint16.

- TIFF: 8- or 16-bit unsigned samples, grey, RGB or RGBA, one page, decoded by OpenCV (LZW,
  Deflate, PackBits, JPEG compression); checked from its image directory before decoding.
- DICOM (`pydicom`): MONOCHROME2 as stored; MONOCHROME1 inverted (its 0 is white); RGB and
  YBR_FULL(_422) as BGR (pydicom converts YBR to RGB). Grey levels are scaled from the stored
  range ``[0, 2**BitsStored - 1]`` to the full range of uint8 (BitsStored <= 8) or uint16
  (9 to 16 bits): 12-bit 4095 becomes 65535. Rescale slope and intercept and the VOI window
  are not applied: ultrasound stores display grey levels, and a positive linear rescale would
  not change the image. Signed pixel data, other photometric interpretations (PALETTE COLOR,
  ...) and bit depths other than 8 or 16 allocated are refused. A multi-frame file (cine loop)
  is read one frame at a time (`count_frames`, ``read_image_file(path, frame=i)``); without a
  frame it is refused. Compressed pixel data whose decoder is not installed is refused with
  the transfer syntax and what to install (pydicom decodes JPEG baseline and JPEG 2000 with
  Pillow and RLE itself; JPEG-LS and lossless JPEG need pylibjpeg or python-gdcm).

Every format is checked against `MAX_IMAGE_PIXELS` from its header (PNG IHDR, TIFF image
directory, DICOM Rows x Columns per frame) before any pixel data is decoded.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

import mask_processing
from class_labels import LESION_CLASSES

# Largest image (width x height) that is decoded. BUSI's largest is 1048 x 719 (0.75 MP); a
# 25 MP grey image needs 25 MB once decoded. A larger PNG is refused from its header, before
# decoding: a small file can claim 20000 x 20000 pixels (a decompression bomb, 400 MB to 1.6 GB).
MAX_IMAGE_PIXELS = 25_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Other formats, by their first bytes, to say what a misnamed ".png" file really is.
_OTHER_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "RIFF (WebP?)",
    b"PK\x03\x04": "a zip archive",
}
# Formats `read_image_file` reads, by their first bytes; DICOM by "DICM" after a 128-byte preamble.
_FORMAT_SIGNATURES = {
    PNG_SIGNATURE: "png",
    b"\xff\xd8\xff": "jpeg",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF: recognised, then refused
    b"MM\x00+": "tiff",
}
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "dicom": "DICOM"}
# Image formats of a dataset index (`folder_index.index_folder`); masks are always PNG.
INDEX_IMAGE_FORMATS = ("png", "tiff", "dicom")
TIFF_EXTENSIONS = (".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
DICOM_PREAMBLE_BYTES = 128
DICOM_PREFIX = b"DICM"
DICOM_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
# DICOM elements longer than this (the pixel data) are not read with the header.
DICOM_DEFER_BYTES = 4096
# Pip names of the decoders pydicom names by their import names.
_PIP_NAMES = {"gdcm": "python-gdcm"}
# Syntax of a colour map given as text (the --mask-colours option), RGB order.
MASK_COLOURS_EXAMPLE = "benign=0,255,0;malignant=255,0,0"


def png_file_problem(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Checks a file's first bytes before it is decoded; says what is wrong, or None.

    Reads at most 33 bytes (the PNG signature and header chunk), so it is cheap and safe on any
    file: a broken symbolic link (a loop, or a missing target), something that is not a regular
    file, an empty file, a file of another format named ``.png`` (JPEG, GIF, ...), a header cut
    short, and an image with more than `max_pixels` pixels (refused before decoding: a small
    file can claim 20000 x 20000 pixels) are all named. A file that passes can still be
    truncated further on; `read_png` finds that when decoding.

    Args:
        path: the file.
        max_pixels: the largest width x height accepted.

    Returns:
        A short reason (e.g. ``"empty file (0 bytes)"``), or None when the file looks right.
    """
    path = Path(path)
    problem = _file_problem(path)
    if problem is not None:
        return problem
    with open(path, "rb") as handle:
        header = handle.read(33)
    if not header.startswith(PNG_SIGNATURE):
        kind = next((k for sig, k in _OTHER_SIGNATURES.items() if header.startswith(sig)), None)
        what = f"its content is {kind}" if kind else "it does not start with the PNG signature"
        return f"not a PNG file ({what}); convert it to PNG (lossless) and index again"
    if len(header) < 24 or header[12:16] != b"IHDR":
        return "not a valid PNG file (bad header: truncated or damaged)"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    if width * height > max_pixels:
        return _too_large(width, height, max_pixels)
    return None


def _file_problem(path: Path) -> str | None:
    """What makes `path` unreadable before its format is looked at, or None."""
    if path.is_symlink() and not path.exists():
        return "symbolic link that cannot be followed (a link loop, or its target is missing)"
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a regular file"
    try:
        with open(path, "rb") as handle:
            first = handle.read(1)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not first:
        return "empty file (0 bytes)"
    return None


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image of {width}x{height} pixels (width x height) is larger than MAX_IMAGE_PIXELS "
        f"({max_pixels:,}) and is not decoded (a decompression bomb, or not an ultrasound image)"
    )


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Decodes a PNG file exactly as stored (grey, RGB as BGR, or RGBA as BGRA).

    The file is checked by `png_file_problem` first, so an image of more than
    `MAX_IMAGE_PIXELS` pixels is refused from its header, before any decoding.

    Args:
        path: the file. Names with spaces, parentheses or non-ASCII letters are fine.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array, uint8 (or uint16 for 16-bit files); palette images
        come as ``(H, W, 3)`` BGR.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not a PNG, too large, truncated or not decodable; the
            message names the file and says which.
    """
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        raise FileNotFoundError(f"Image file not found: '{path}'.")
    problem = png_file_problem(path)
    if problem is not None:
        raise ValueError(
            f"Could not read '{path}': {problem}. Fix or remove the file, or index with "
            f"on_error='skip' to leave it out (it is counted)."
        )
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise ValueError(
            f"Could not decode '{path}' ({data.size} bytes): the PNG is unreadable or truncated. "
            f"Re-download the file, or index with on_error='skip' to leave it out (it is counted)."
        )
    return array


# --------------------------------------------------------------------------------------------
# Any image file: PNG, JPEG, BMP, TIFF, DICOM
# --------------------------------------------------------------------------------------------


def file_format(path: str | os.PathLike) -> str | None:
    """The format of a file from its first bytes: a key of `FORMAT_NAMES`, or None.

    Returns None for anything else, and for a file that cannot be opened.

    Example:
        >>> file_format("benign (1).png")  # doctest: +SKIP
        'png'
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(DICOM_PREAMBLE_BYTES + len(DICOM_PREFIX))
    except OSError:
        return None
    if header[DICOM_PREAMBLE_BYTES:] == DICOM_PREFIX:
        return "dicom"
    return next((kind for sig, kind in _FORMAT_SIGNATURES.items() if header.startswith(sig)), None)


def image_file_problem(
    path: str | os.PathLike,
    formats: Sequence[str] = INDEX_IMAGE_FORMATS,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> str | None:
    """Checks an image file of a dataset index from its header, before decoding; says what is wrong.

    The twin of `png_file_problem` for images that may also be TIFF or DICOM. Besides what
    `png_file_problem` names: a format outside `formats`, and whatever `read_image_file` would
    refuse from a TIFF or DICOM header (more than `max_pixels` pixels, several pages or frames,
    unsupported samples, a truncated file, compressed pixel data without its decoder). A
    multi-frame DICOM file is a problem here: an index pairs one image with its masks.

    Args:
        path: the file.
        formats: accepted formats, keys of `FORMAT_NAMES`.
        max_pixels: the largest width x height accepted.

    Returns:
        A short reason, or None when the file looks right.
    """
    path = Path(path)
    kind = file_format(path)
    if kind == "png" or kind not in formats and tuple(formats) == ("png",):
        return png_file_problem(path, max_pixels)
    problem = _file_problem(path)
    if problem is not None:
        return problem
    if kind not in formats:
        names = [FORMAT_NAMES[f] for f in formats]
        expected = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        what = f"its content is {FORMAT_NAMES[kind]}" if kind else "its format is not recognised"
        return f"not a {expected} file ({what}); convert it to PNG (lossless) and index again"
    try:
        if kind == "tiff":
            _tiff_header(path, max_pixels)
        elif kind == "dicom":
            frames = _dicom_frames(_dicom_header(path, max_pixels))
            if frames > 1:
                return (
                    f"multi-frame DICOM file ({frames} frames); an index pairs one image with its masks: "
                    f"export each frame as its own file"
                )
    except ValueError as error:
        return str(error)
    return None


def image_header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of a PNG, TIFF or DICOM image from its header, or None."""
    path = Path(path)
    kind = file_format(path)
    try:
        if kind == "tiff":
            width, height = _tiff_header(path, max_pixels=2**64)
            return height, width
        if kind == "dicom":
            header = _dicom_header(path, max_pixels=2**64)
            return int(header.Rows), int(header.Columns)
    except ValueError:
        return None
    return png_header_size(path)


def count_frames(path: str | os.PathLike) -> int:
    """Number of images in a file: ``NumberOfFrames`` of a DICOM file, 1 for any other file.

    Raises:
        ValueError: a DICOM file that `read_image_file` would refuse from its header; the
            message names the file.
    """
    path = Path(path)
    if file_format(path) != "dicom":
        return 1
    return _dicom_frames(_named(_dicom_header, path))


def read_image_file(path: str | os.PathLike, frame: int | None = None) -> np.ndarray:
    """Reads a PNG, JPEG, BMP, TIFF or DICOM image file, by its content (the name does not matter).

    Each format is checked from its header before decoding (see the module docstring for
    TIFF and DICOM): more than `MAX_IMAGE_PIXELS` pixels is refused there. A PNG is read by
    `read_png`, a DICOM file by pydicom, anything else by `cv2.imdecode`.

    Args:
        path: the file.
        frame: for a multi-frame DICOM file, which frame, from 0 (`count_frames` says how
            many); None for a file of one image. Any other file has only frame 0.

    Returns:
        ``(H, W)`` grey or ``(H, W, C)`` BGR(A), uint8 or uint16, as `cv2.imdecode` with
        ``IMREAD_UNCHANGED`` decodes; DICOM converted as the module docstring says.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty, damaged, truncated or too large file, a multi-frame DICOM file
            without `frame`, a frame that does not exist, compressed DICOM pixel data whose
            decoder is not installed (the transfer syntax and what to install are named), or
            bytes that do not decode. The message names the file.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"Image file not found: '{path}'.")
    problem = _file_problem(path)
    if problem is not None:
        raise ValueError(f"'{path.name}': {problem}.")
    kind = file_format(path)
    if kind == "dicom":
        return _read_dicom(path, frame)
    if frame not in (None, 0):
        raise ValueError(f"'{path.name}' holds one image; expected frame None or 0, received {frame!r}.")
    if kind == "png":
        return read_png(path)
    if kind == "tiff":
        _named(_tiff_header, path)
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(
            f"'{path.name}' could not be decoded as a PNG, JPEG, BMP, TIFF or DICOM image ({data.size} bytes)."
        )
    return array


def _named(check, path: Path, *args):
    """``check(path, *args)``, its ValueError (a bare reason) re-raised with the file's name."""
    try:
        return check(path, *args)
    except ValueError as error:
        raise ValueError(f"'{path.name}': {error}.") from None


# ---------------------------------------------------------------- TIFF


def _tiff_header(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of a TIFF file from its image directories, after the checks below.

    Reads only the directories (a few hundred bytes), never the image data. Refused, each by a
    ValueError with a bare reason: BigTIFF, a damaged or truncated directory, more than one
    page (OpenCV would silently read the first), samples that are not 8- or 16-bit unsigned
    integers, other than 1, 3 or 4 samples per pixel, more than `max_pixels` pixels, and
    image data that runs past the end of the file (truncated).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("truncated TIFF (no header)")
        order = "<" if head[:2] == b"II" else ">"
        if struct.unpack(order + "H", head[2:4])[0] == 43:
            raise ValueError("BigTIFF is not supported; save the image as a classic TIFF or a PNG")
        offset = struct.unpack(order + "I", head[4:8])[0]
        tags, pages, seen = {}, 0, set()
        while offset:
            if offset in seen or offset + 2 > size:
                raise ValueError("damaged TIFF (an image directory lies outside the file)")
            seen.add(offset)
            pages += 1
            handle.seek(offset)
            (count,) = struct.unpack(order + "H", handle.read(2))
            entries = handle.read(12 * count + 4)
            if len(entries) < 12 * count + 4:
                raise ValueError("truncated TIFF (its image directory is cut short)")
            if pages == 1:
                tags = {
                    tag: _tiff_values(handle, order, entries[12 * i : 12 * i + 12], size)
                    for i in range(count)
                    if (tag := struct.unpack(order + "H", entries[12 * i : 12 * i + 2])[0]) in _TIFF_TAGS
                }
            offset = struct.unpack(order + "I", entries[-4:])[0]
    _check_tiff_tags(tags, pages, size, max_pixels)
    return tags[256][0], tags[257][0]


# TIFF tags read: ImageWidth, ImageLength, BitsPerSample, StripOffsets, SamplesPerPixel,
# StripByteCounts, TileOffsets, TileByteCounts, SampleFormat.
_TIFF_TAGS = (256, 257, 258, 273, 277, 279, 324, 325, 339)
_TIFF_TYPES = {1: "B", 3: "H", 4: "I"}  # BYTE, SHORT, LONG


def _tiff_values(handle, order: str, entry: bytes, size: int) -> list[int]:
    """The values of one 12-byte directory entry: inline when they fit in 4 bytes, else at an offset."""
    kind, count = struct.unpack(order + "HI", entry[2:8])
    if kind not in _TIFF_TYPES:
        raise ValueError(f"damaged TIFF (tag {struct.unpack(order + 'H', entry[:2])[0]} has type {kind})")
    width = struct.calcsize(_TIFF_TYPES[kind])
    if count * width <= 4:
        raw = entry[8 : 8 + count * width]
    else:
        (offset,) = struct.unpack(order + "I", entry[8:12])
        if offset + count * width > size:
            raise ValueError("truncated TIFF (a tag's values lie past the end of the file)")
        handle.seek(offset)
        raw = handle.read(count * width)
    return list(struct.unpack(f"{order}{count}{_TIFF_TYPES[kind]}", raw))


def _check_tiff_tags(tags: dict[int, list[int]], pages: int, size: int, max_pixels: int) -> None:
    if 256 not in tags or 257 not in tags:
        raise ValueError("damaged TIFF (no image width or height)")
    width, height = tags[256][0], tags[257][0]
    if width * height > max_pixels:
        raise ValueError(_too_large(width, height, max_pixels))
    if pages > 1:
        raise ValueError(
            f"TIFF of {pages} pages; expected one image per file: save each page as its own file"
        )
    bits, samples = tags.get(258, [1]), tags.get(277, [1])[0]
    if set(bits) - {8, 16} or len(set(bits)) != 1 or tags.get(339, [1])[0] != 1:
        raise ValueError(
            f"TIFF samples of {'/'.join(map(str, bits))} bits, sample format {tags.get(339, [1])[0]}; "
            f"expected 8- or 16-bit unsigned integers (sample format 1)"
        )
    if samples not in (1, 3, 4):
        raise ValueError(f"TIFF of {samples} samples per pixel; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    offsets, counts = tags.get(273, tags.get(324, [])), tags.get(279, tags.get(325, []))
    end = max((offset + count for offset, count in zip(offsets, counts)), default=0)
    if end > size:
        raise ValueError(f"truncated TIFF (its image data runs to byte {end:,}; the file has {size:,} bytes)")


# ---------------------------------------------------------------- DICOM


class _Refusal(ValueError):
    """A DICOM file refused for a reason its header states (not a failure to parse it)."""


def _dicom_header(path: Path, max_pixels: int = MAX_IMAGE_PIXELS):
    """The dataset of a DICOM file, its pixel data deferred (not read), after the checks below.

    Refused, each by a ValueError with a bare reason: a file pydicom cannot parse (any error
    while reading or converting the header is reported as damage, with its type), no pixel
    data, a missing image attribute, more than `max_pixels` pixels per frame, a photometric
    interpretation outside `DICOM_PHOTOMETRIC`, samples per pixel that do not match it, bit
    depths other than 8 or 16 allocated, signed pixel data, native pixel data shorter than its
    frames need (truncated), and compressed pixel data whose decoder is not installed.
    """
    import pydicom  # here, not at the top: 0.25 s of start-up that PNG users need not pay

    try:
        header = pydicom.dcmread(path, defer_size=DICOM_DEFER_BYTES)
        _check_dicom_header(header, path, max_pixels)
    except _Refusal:
        raise
    except (ValueError, *_dicom_errors()) as error:
        said = " ".join(str(error).split())[:200]
        raise ValueError(f"damaged DICOM file, not readable ({type(error).__name__}: {said})") from None
    return header


def _dicom_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises on a damaged file besides ValueError (it parses and converts lazily)."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    parsing = (InvalidDicomError, BytesLengthException, NotImplementedError, EOFError, OSError, struct.error)
    converting = (KeyError, AttributeError, TypeError, IndexError, OverflowError)
    return parsing + converting


def _check_dicom_header(header, path: Path, max_pixels: int) -> None:
    if "PixelData" not in header:
        raise _Refusal(
            "DICOM file without pixel data (not an image: a report, a DICOMDIR, ...; or a header cut short)"
        )
    missing = [name for name in _DICOM_IMAGE_ATTRIBUTES if header.get(name) in (None, "")]
    if "TransferSyntaxUID" not in header.file_meta or missing:
        raise _Refusal(f"DICOM image without {', '.join(missing or ['TransferSyntaxUID'])}")
    _check_dicom_pixels(header, max_pixels)
    _dicom_frames(header)
    syntax = header.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        _check_dicom_length(header, path)
    _check_decoder(syntax)


_DICOM_IMAGE_ATTRIBUTES = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)


def _check_dicom_pixels(header, max_pixels: int) -> None:
    """Size, photometric interpretation, samples and bit depth of a DICOM image."""
    rows, columns = int(header.Rows), int(header.Columns)
    if rows * columns > max_pixels:
        raise _Refusal(_too_large(columns, rows, max_pixels))
    photometric = str(header.PhotometricInterpretation).strip()
    if photometric not in DICOM_PHOTOMETRIC:
        raise _Refusal(
            f"DICOM photometric interpretation {photometric!r}; expected one of {DICOM_PHOTOMETRIC}"
        )
    samples = 1 if photometric.startswith("MONOCHROME") else 3
    if int(header.SamplesPerPixel) != samples:
        raise _Refusal(
            f"DICOM {photometric} image with {header.SamplesPerPixel} samples per pixel; expected {samples}"
        )
    bits_allocated, bits_stored = int(header.BitsAllocated), int(header.BitsStored)
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise _Refusal(
            f"DICOM pixels of {bits_stored} bits stored in {bits_allocated}; expected 8 or 16 bits allocated"
        )
    if int(header.PixelRepresentation) != 0:
        raise _Refusal(
            "DICOM pixel data of signed integers; expected unsigned grey levels, as ultrasound stores"
        )


def _check_dicom_length(header, path: Path) -> None:
    """Refuses native (uncompressed) pixel data shorter than its frames need: a truncated file."""
    frames, rows, columns = _dicom_frames(header), int(header.Rows), int(header.Columns)
    # YBR_FULL_422 stores two samples per pixel (Y Y Cb Cr for a pair of pixels).
    samples = (
        2 if str(header.PhotometricInterpretation).strip() == "YBR_FULL_422" else int(header.SamplesPerPixel)
    )
    needed = frames * rows * columns * samples * int(header.BitsAllocated) // 8
    element = header.get_item("PixelData", keep_deferred=True)
    if element.value is not None:
        held = len(element.value)
    else:  # deferred: the length it declares, at most what the file holds after its start
        held = min(element.length, path.stat().st_size - element.value_tell)
    if held < needed:
        raise _Refusal(
            f"truncated DICOM file: {frames} frame(s) of {columns}x{rows} pixels need {needed:,} bytes of "
            f"pixel data; the file holds {held:,}"
        )


def _dicom_frames(header) -> int:
    frames = int(header.get("NumberOfFrames") or 1)
    if frames < 1:
        raise _Refusal(f"DICOM NumberOfFrames {frames}; expected 1 or more")
    return frames


def _check_decoder(syntax) -> None:
    """Refuses a transfer syntax whose pixel data pydicom cannot decode here, saying what to install."""
    import pydicom.pixels

    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        raise _Refusal(
            f"DICOM transfer syntax '{syntax.name}' ({syntax}) has no decoder in pydicom"
        ) from None
    if decoder.is_available:
        return
    options = []
    for text in (
        decoder.missing_dependencies
    ):  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        needs = [
            need for need in text.partition(" - requires ")[2].split(" and ") if need not in ("", "numpy")
        ]
        options.append("pip install " + " ".join(f"'{_pip_requirement(need)}'" for need in needs))
    raise _Refusal(
        f"DICOM pixel data compressed as '{syntax.name}' ({syntax}) needs a decoder that is not installed: "
        f"{', or '.join(options) or 'see the pydicom documentation'}"
    )


def _pip_requirement(requirement: str) -> str:
    """pydicom names decoders by import name (``gdcm>=3.0.10``); pip needs ``python-gdcm>=3.0.10``."""
    name = re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0]
    return _PIP_NAMES.get(name, name) + requirement[len(name) :]


def _read_dicom(path: Path, frame: int | None) -> np.ndarray:
    """One frame of a DICOM file, converted to OpenCV's conventions (module docstring)."""
    import pydicom.pixels

    header = _named(_dicom_header, path)
    frames = _dicom_frames(header)
    if frame is None and frames > 1:
        raise ValueError(
            f"'{path.name}' is a multi-frame DICOM file ({frames} frames); read one with frame=0 to "
            f"{frames - 1} (segment_images.py segments each frame)."
        )
    if frame is not None and not 0 <= frame < frames:
        raise ValueError(
            f"'{path.name}' has {frames} frame(s); expected frame 0 to {frames - 1}, received {frame}."
        )
    syntax = header.file_meta.TransferSyntaxUID
    try:
        pixels = pydicom.pixels.pixel_array(path, index=frame or 0)
    except (RuntimeError, ValueError, *_dicom_errors()) as error:
        said = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(
            f"'{path.name}': DICOM pixel data ('{syntax.name}') could not be decoded (damaged or truncated?): "
            f"{said}"
        ) from None
    return dicom_to_opencv(pixels, str(header.PhotometricInterpretation).strip(), int(header.BitsStored))


def dicom_to_opencv(pixels: np.ndarray, photometric: str, bits_stored: int) -> np.ndarray:
    """Converts one decoded DICOM frame to what OpenCV decodes from an image file.

    Formula:
        ``out = round(value * top / (2**bits_stored - 1))``, ``top`` 255 for ``bits_stored <= 8``
        (uint8 out), else 65535 (uint16 out); then ``out = top - out`` for MONOCHROME1, and
        colour channels reversed (RGB to BGR).

    Args:
        pixels: ``(H, W)`` grey or ``(H, W, 3)`` RGB (pydicom's `pixel_array` converts YBR to
            RGB), unsigned integers in ``[0, 2**bits_stored - 1]``.
        photometric: the photometric interpretation, one of `DICOM_PHOTOMETRIC`.
        bits_stored: ``BitsStored``, 1 to 16.

    Returns:
        ``(H, W)`` grey or ``(H, W, 3)`` BGR, uint8 or uint16.

    Example:
        >>> dicom_to_opencv(np.array([[0, 2048, 4095]], np.uint16), "MONOCHROME1", 12)
        array([[65535, 32759,     0]], dtype=uint16)
    """
    dtype, top = (np.uint8, 255) if bits_stored <= 8 else (np.uint16, 65535)
    stored_top = 2**bits_stored - 1
    if stored_top == top:
        out = pixels.astype(dtype)
    else:  # exact integer rounding; 65535 * 65535 + 32767 fits in uint64 (and in uint32)
        values = pixels.astype(np.uint64)
        out = ((values * top + stored_top // 2) // stored_top).astype(dtype)
    if photometric == "MONOCHROME1":
        out = top - out
    if out.ndim == 3:
        out = np.ascontiguousarray(out[..., ::-1])
    return out


def to_grey(image: np.ndarray) -> np.ndarray:
    """Converts a decoded image to grey levels in [0, 1].

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA, uint8 or uint16.

    Returns:
        ``(H, W)`` float32 in [0, 1] (luma for colour images, as `cv2.cvtColor`).
    """
    image = np.asarray(image)
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    image = mask_processing.drop_channel_axis(image, 2)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim != 2:
        raise ValueError(f"Expected an image of shape (H, W) or (H, W, 1|3|4); received {image.shape}.")
    return image.astype(np.float32) / np.float32(scale)


def size_tuple(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"Expected image_size as a positive int or (height, width); received {image_size!r}."
        )
    return size


def resize_image(image: np.ndarray, image_size: int | Sequence[int]) -> np.ndarray:
    """Resizes a grey image with area interpolation (the right filter for shrinking).

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` float32 in [0, 1].
        image_size: output side, or ``(height, width)``. Aspect ratio is not kept (BUSI
            convention: every image is stretched to the model's square input).

    Returns:
        ``(height, width, 1)`` float32 in [0, 1].
    """
    height, width = size_tuple(image_size)
    image = mask_processing.drop_channel_axis(np.asarray(image, dtype=np.float32), 2)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(resized, 0.0, 1.0)[..., None]


def resize_mask(mask: np.ndarray, image_size: int | Sequence[int]) -> np.ndarray:
    """Resizes a binary mask with nearest-neighbour interpolation, so it stays binary.

    Args:
        mask: ``(H, W)`` or ``(H, W, 1)`` uint8 in {0, 1}.
        image_size: output side, or ``(height, width)``.

    Returns:
        ``(height, width, 1)`` uint8 in {0, 1}.
    """
    height, width = size_tuple(image_size)
    mask = mask_processing.drop_channel_axis(np.asarray(mask, dtype=np.uint8), 2)
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)[..., None]


def load_image(path: str | os.PathLike, image_size: int | Sequence[int]) -> np.ndarray:
    """Reads one image file (`read_image_file`: PNG, TIFF, DICOM, ...), converts it to grey and resizes it.

    Returns:
        ``(height, width, 1)`` float32 in [0, 1].
    """
    return resize_image(to_grey(read_image_file(path)), image_size)


def load_mask(
    mask_paths: Sequence[str | os.PathLike],
    image_size: int | Sequence[int],
    mask_colours: str | Mapping[str, Sequence[int]] | None = None,
) -> np.ndarray:
    """Reads every mask file of one image, merges them (maximum), then resizes (nearest).

    Args:
        mask_paths: the image's mask files.
        image_size: output side, or ``(height, width)``.
        mask_colours: None or "" for binary masks; else the colour map of colour-coded masks
            (see `read_mask`).

    Returns:
        ``(height, width, 1)`` uint8 in {0, 1}.
    """
    return resize_mask(read_mask(mask_paths, mask_colours), image_size)


def read_mask(
    mask_paths: Sequence[str | os.PathLike], mask_colours: str | Mapping[str, Sequence[int]] | None = None
) -> np.ndarray:
    """Reads every mask file of one image at its own size and merges them (their union).

    Args:
        mask_paths: the image's mask files, all of one size.
        mask_colours: None or "" for binary masks (`mask_processing.binarize_mask`: 0/1, 0/255,
            16-bit, RGBA); else a colour map, ``{"benign": (0, 255, 0), ...}`` or its text form
            (`parse_mask_colours`), for colour-coded masks (`mask_processing.decode_colour_mask`).

    Returns:
        ``(H, W)`` uint8 in {0, 1}.

    Raises:
        ValueError: an unreadable file, a non-binary mask, unknown colours, or masks of
            different sizes; the message names the file.
    """
    colours = parse_mask_colours(mask_colours) if mask_colours else None
    names = [Path(p).name for p in mask_paths]
    decoded = [decode_mask(read_png(path), name, colours)[0] for path, name in zip(mask_paths, names)]
    return mask_processing.merge_masks(decoded, names=names)


def decode_mask(
    mask: np.ndarray, name: str, colours: Mapping[str, Sequence[int]] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Decodes one mask as `read_png` returns it: binary, or colour-coded through `colours`.

    Args:
        mask: ``(H, W)`` or ``(H, W, C)`` uint8 or uint16, colour in OpenCV's BGR(A) order.
        name: what to call the mask in errors (its file name).
        colours: None for a binary mask; else label -> ``(r, g, b)`` (RGB order). A 16-bit
            colour mask must hold 8-bit levels scaled by 257 (0, 257, ..., 65535).

    Returns:
        ``(mask, labels)``: ``(H, W)`` uint8 in {0, 1}, and the labels whose colours occur
        (always empty for a binary mask).

    Raises:
        ValueError: a non-binary mask, or unknown colours; the message names the mask.
    """
    if colours is None:
        return mask_processing.binarize_mask(mask, name), []
    mask = np.asarray(mask)
    if mask.dtype == np.uint16:
        if np.any(mask % 257):
            raise ValueError(
                f"Expected a 16-bit colour mask with 8-bit levels (multiples of 257); received other values "
                f"in {name!r}."
            )
        mask = (mask // 257).astype(np.uint8)
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        mask = mask[..., [2, 1, 0, 3][: mask.shape[2]]]  # OpenCV's BGR(A) -> RGB(A)
    return mask_processing.decode_colour_mask(mask, colours, name)


def parse_mask_colours(spec: str | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int, int]]:
    """Checks a colour map of colour-coded masks, given as a mapping or as text.

    Text form: ``"benign=0,255,0;malignant=255,0,0"``, ``label=R,G,B`` in RGB order separated
    by ``;`` (spaces and letter case do not matter). Labels are lesion classes (`LESION_CLASSES`):
    a normal image is one whose mask is all black.

    Args:
        spec: the text, or a mapping label -> ``(r, g, b)``.

    Returns:
        label -> ``(r, g, b)`` ints in [0, 255], in the given order.

    Raises:
        ValueError: bad syntax, an unknown or repeated label, a value outside [0, 255], black
            (the background), or one colour for two labels.

    Example:
        >>> parse_mask_colours("Benign = 0,255,0; malignant=255,0,0")
        {'benign': (0, 255, 0), 'malignant': (255, 0, 0)}
    """
    if isinstance(spec, str):
        pairs = []
        for part in (p for p in spec.split(";") if p.strip()):
            label, equals, rgb = part.partition("=")
            values = [v.strip() for v in rgb.split(",")]
            if not equals or len(values) != 3 or not all(v.isdigit() for v in values):
                raise ValueError(
                    f"Expected mask colours like {MASK_COLOURS_EXAMPLE!r} (label=R,G,B in RGB order, "
                    f"separated by ';'); received {spec!r} (bad part {part.strip()!r})."
                )
            pairs.append((label.strip().lower(), tuple(int(v) for v in values)))
    else:
        pairs = [(str(key).strip().lower(), tuple(int(v) for v in rgb)) for key, rgb in dict(spec).items()]
    labels = [label for label, _ in pairs]
    if not pairs or any(label not in LESION_CLASSES for label in labels) or len(set(labels)) != len(labels):
        raise ValueError(
            f"Expected mask colours for labels from {LESION_CLASSES}, each once (a normal image has an "
            f"all-black mask); received labels {labels} in {spec!r}."
        )
    for label, rgb in pairs:
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or rgb == (0, 0, 0):
            raise ValueError(
                f"Expected an RGB colour of three values in [0, 255], not black (the background), for "
                f"{label!r}; received {rgb} in {spec!r}."
            )
    if len({rgb for _, rgb in pairs}) != len(pairs):
        raise ValueError(f"Expected a different colour for each label; received {spec!r}.")
    return dict(pairs)


def format_mask_colours(colours: Mapping[str, Sequence[int]]) -> str:
    """The text form of a colour map, as `parse_mask_colours` reads it (``"benign=0,255,0;..."``)."""
    return ";".join(f"{label}={','.join(str(int(v)) for v in rgb)}" for label, rgb in colours.items())


def png_header_size(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as handle:
        header = handle.read(24)
    if len(header) < 24 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
        return None
    return int.from_bytes(header[20:24], "big"), int.from_bytes(header[16:20], "big")
