"""Reading image and mask files: PNG checks before decoding, grey conversion, resizing, mask decoding.

Arrays out, in the conventions of busi-unet: an image ``(H, W, 1) float32 in [0, 1]`` (grey
levels / 255, area-resized), a mask ``(H, W, 1) uint8 in {0, 1}`` (all masks of an image merged
by maximum, then nearest-neighbour resized). A file that cannot be used is refused with a
ValueError that names it and says what is wrong; `png_file_problem` says so without raising.
"""

from __future__ import annotations

import os
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
    if path.is_symlink() and not path.exists():
        return "symbolic link that cannot be followed (a link loop, or its target is missing)"
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a regular file"
    try:
        with open(path, "rb") as handle:
            header = handle.read(33)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not header:
        return "empty file (0 bytes)"
    if not header.startswith(PNG_SIGNATURE):
        kind = next((k for sig, k in _OTHER_SIGNATURES.items() if header.startswith(sig)), None)
        what = f"its content is {kind}" if kind else "it does not start with the PNG signature"
        return f"not a PNG file ({what}); convert it to PNG (lossless) and index again"
    if len(header) < 24 or header[12:16] != b"IHDR":
        return "not a valid PNG file (bad header: truncated or damaged)"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    if width * height > max_pixels:
        return (
            f"image of {width}x{height} pixels (width x height) is larger than MAX_IMAGE_PIXELS "
            f"({max_pixels:,}) and is not decoded (a decompression bomb, or not an ultrasound image)"
        )
    return None


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
    """Reads one image file, converts it to grey and resizes it.

    Returns:
        ``(height, width, 1)`` float32 in [0, 1].
    """
    return resize_image(to_grey(read_png(path)), image_size)


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
