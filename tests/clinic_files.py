"""Small DICOM and TIFF files written by the tests themselves, as clinics export them.

DICOM files are built with pydicom (a file meta header, Explicit VR Little Endian unless a
compressed transfer syntax is asked for); TIFF files either with OpenCV or, where a test needs a
header OpenCV would not write (a claimed size, image data cut short), by hand with struct.
Not a test module (no ``test_`` prefix); imported by the image_io, segment_images and
folder_index tests.
"""

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    rows_columns: tuple[int, int] | None = None,
    signed: bool = False,
) -> Path:
    """Writes an ultrasound DICOM file holding `pixels`.

    Args:
        path: the file to write.
        pixels: ``(H, W)`` grey, ``(H, W, 3)`` colour (RGB or YBR values as stored), or
            ``(frames, H, W)`` / ``(frames, H, W, 3)`` when ``frames > 1``; uint8 or uint16.
        photometric: the PhotometricInterpretation.
        bits_stored: BitsStored (default: all the bits of the dtype).
        syntax: the transfer syntax; a compressed one encapsulates `pixel_data`.
        pixel_data: raw bytes written instead of ``pixels.tobytes()`` (native), or the one
            compressed frame (encapsulated).
        rows_columns: Rows and Columns to claim instead of the array's.
        signed: PixelRepresentation 1.
    """
    colour = photometric.startswith(("RGB", "YBR"))
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    rows, columns = rows_columns or (pixels.shape[-3:-1] if colour else pixels.shape[-2:])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = syntax
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "US"
    dataset.Rows, dataset.Columns = int(rows), int(columns)
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = pixels.dtype.itemsize * 8
    dataset.BitsStored = bits_stored or dataset.BitsAllocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = int(signed)
    if frames > 1:
        dataset.NumberOfFrames = frames
    data = pixels.tobytes() if pixel_data is None else pixel_data
    if meta.TransferSyntaxUID.is_compressed:
        dataset.PixelData = encapsulate([data])
        dataset["PixelData"].VR = "OB"
    else:
        dataset.PixelData = data + b"\0" * (len(data) % 2)  # even length, as DICOM requires
        dataset["PixelData"].VR = "OW" if dataset.BitsAllocated == 16 else "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def tiff_bytes(pixels: np.ndarray, claimed: tuple[int, int] | None = None, cut: int = 0) -> bytes:
    """An uncompressed 8-bit grey TIFF, directory first, image data after it.

    Args:
        pixels: ``(H, W)`` uint8.
        claimed: ``(height, width)`` to write in the header instead of the array's.
        cut: bytes of image data left out at the end (a truncated file).
    """
    height, width = claimed or pixels.shape
    # (tag, type, value): SHORT (3) values sit left-justified in the 4-byte value field.
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, None), (277, 3, 1), (278, 4, height), (279, 4, pixels.size)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    directory = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if value is None else value
        field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        directory += struct.pack("<HHI", tag, kind, 1) + field
    directory += struct.pack("<I", 0)  # no next directory: one page
    data = pixels.tobytes()
    return b"II*\x00" + struct.pack("<I", 8) + directory + data[: len(data) - cut]
