"""image_io.read_image_file on TIFF and DICOM files the tests write: exact pixel values out, every
refusal pinned by its message, and size checks from the header before any pixel data is decoded."""

import cv2
import numpy as np
import pydicom.pixels
import pytest
from clinic_files import tiff_bytes, write_dicom
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless

import image_io

GREY = np.array([[0, 100, 255], [7, 128, 200]], np.uint8)  # (2, 3): rows differ from columns


def _no_decoding(monkeypatch):
    """Makes every pixel decoder fail the test: what is refused must be refused from its header."""

    def decoded(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(image_io.cv2, "imdecode", decoded)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", decoded)


# ---------------------------------------------------------------- TIFF


@pytest.mark.parametrize(
    "pixels",
    [
        GREY,
        GREY.astype(np.uint16) * 257
        + np.array([[0, 1, 0], [2, 0, 0]], np.uint16),  # 16 bit, not only 8-bit levels
        np.dstack([GREY, GREY // 2, 255 - GREY]),  # BGR, three different channels
        np.dstack([GREY, GREY // 2, 255 - GREY]).astype(np.uint16) * 257,
    ],
    ids=["grey 8 bit", "grey 16 bit", "colour 8 bit", "colour 16 bit"],
)
def test_tiff_comes_back_exactly_as_written(tmp_path, pixels):
    path = tmp_path / "scan.tif"
    assert cv2.imwrite(str(path), pixels)
    image = image_io.read_image_file(path)
    assert image.dtype == pixels.dtype
    np.testing.assert_array_equal(image, pixels)  # exact: TIFF is lossless, channels stay BGR
    assert image_io.file_format(path) == "tiff" and image_io.count_frames(path) == 1
    assert image_io.image_header_size(path) == (2, 3) and image_io.image_file_problem(path) is None


def test_a_hand_written_tiff_reads_and_its_format_comes_from_its_content(tmp_path):
    path = tmp_path / "named_like_a.png"
    path.write_bytes(tiff_bytes(GREY))
    assert image_io.file_format(path) == "tiff"
    np.testing.assert_array_equal(image_io.read_image_file(path), GREY)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: cv2.imwritemulti(str(p), [GREY] * 3), "TIFF of 3 pages; expected one image per file"),
        (
            lambda p: cv2.imwrite(str(p), GREY.astype(np.float32)),
            "TIFF samples of 32 bits, sample format 3; expected 8- or 16-bit",
        ),
        (
            lambda p: p.write_bytes(tiff_bytes(GREY, cut=2)),
            r"truncated TIFF \(its image data runs to byte 128;",
        ),
        (
            lambda p: p.write_bytes(tiff_bytes(GREY)[:30]),
            r"truncated TIFF \(its image directory is cut short\)",
        ),
        (lambda p: p.write_bytes(b"II+\x00" + bytes(12)), "BigTIFF is not supported"),
    ],
    ids=["three pages", "float samples", "image data cut", "directory cut", "BigTIFF"],
)
def test_tiff_problems_are_named_before_decoding(tmp_path, monkeypatch, write, message):
    path = tmp_path / "bad.tif"
    write(path)
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError, match=rf"^'bad.tif': {message}"):
        image_io.read_image_file(path)
    assert image_io.image_file_problem(path) is not None


def test_a_tiff_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "huge.tiff"
    path.write_bytes(tiff_bytes(GREY, claimed=(20000, 20000)))  # 74 bytes claiming 400 MP
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError, match=r"'huge.tiff': image of 20000x20000 pixels .* MAX_IMAGE_PIXELS"):
        image_io.read_image_file(path)
    assert "MAX_IMAGE_PIXELS" in image_io.image_file_problem(path)


# ---------------------------------------------------------------- DICOM: conversion


def test_dicom_monochrome2_8_bit_is_read_as_stored(tmp_path):
    path = write_dicom(tmp_path / "grey.dcm", GREY)
    image = image_io.read_image_file(path)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, GREY)
    assert image_io.file_format(path) == "dicom" and image_io.image_header_size(path) == (2, 3)


def test_dicom_16_bit_is_scaled_from_bits_stored_to_the_uint16_range(tmp_path):
    stored = np.array([[0, 1, 2048], [4095, 0, 0]], np.uint16)
    path = write_dicom(tmp_path / "deep.dcm", stored, bits_stored=12)
    image = image_io.read_image_file(path)
    assert image.dtype == np.uint16
    # round(value * 65535 / 4095): 1 -> 16.004 -> 16, 2048 -> 32775.5... -> 32776, 4095 -> 65535
    np.testing.assert_array_equal(image, [[0, 16, 32776], [65535, 0, 0]])
    full = np.array([[0, 1, 65535]], np.uint16)
    np.testing.assert_array_equal(image_io.read_image_file(write_dicom(tmp_path / "full.dcm", full)), full)


def test_dicom_8_bit_with_fewer_bits_stored_is_scaled_to_uint8(tmp_path):
    stored = np.array([[0, 1, 100, 127]], np.uint8)
    image = image_io.read_image_file(write_dicom(tmp_path / "seven.dcm", stored, bits_stored=7))
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, [[0, 2, 201, 255]])  # round(value * 255 / 127)


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "inverted.dcm", GREY, photometric="MONOCHROME1")
    np.testing.assert_array_equal(image_io.read_image_file(path), 255 - GREY)
    deep = np.array([[0, 2048, 4095]], np.uint16)
    path = write_dicom(tmp_path / "inverted12.dcm", deep, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(image_io.read_image_file(path), [[65535, 65535 - 32776, 0]])


def test_dicom_rgb_comes_back_as_bgr(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # red
    rgb[1, 2] = (10, 20, 30)
    image = image_io.read_image_file(write_dicom(tmp_path / "colour.dcm", rgb, photometric="RGB"))
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb[..., ::-1])
    assert tuple(image[0, 0]) == (0, 0, 255) and tuple(image[1, 2]) == (30, 20, 10)


def test_dicom_ybr_full_and_422_come_back_as_bgr(tmp_path):
    # YCbCr (ITU-R BT.601 full range) of pure red (255, 0, 0) and pure green (0, 255, 0).
    red, green = (76, 85, 255), (150, 44, 21)
    ybr = np.array([[red, green]], np.uint8)
    image = image_io.read_image_file(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL"))
    np.testing.assert_allclose(
        image, [[[0, 0, 255], [0, 255, 0]]], atol=1
    )  # 8-bit rounding of the conversion
    # 4:2:2: two pixels share their chroma, stored Y1 Y2 Cb Cr.
    data = bytes([*red[:1], red[0], *red[1:], *green[:1], green[0], *green[1:]])
    frame = np.zeros((2, 2, 3), np.uint8)
    path = write_dicom(tmp_path / "ybr422.dcm", frame, photometric="YBR_FULL_422", pixel_data=data)
    image = image_io.read_image_file(path)
    np.testing.assert_allclose(image, [[[0, 0, 255]] * 2, [[0, 255, 0]] * 2], atol=1)


def test_dicom_to_opencv_by_hand():
    out = image_io.dicom_to_opencv(np.array([[0, 2048, 4095]], np.uint16), "MONOCHROME1", 12)
    np.testing.assert_array_equal(out, [[65535, 32759, 0]])
    out = image_io.dicom_to_opencv(np.array([[[1, 2, 3]]], np.uint8), "RGB", 8)
    np.testing.assert_array_equal(out, [[[3, 2, 1]]])


# ---------------------------------------------------------------- DICOM: frames and refusals


def test_multi_frame_dicom_is_read_one_frame_at_a_time(tmp_path):
    frames = np.stack([GREY, GREY // 2, 255 - GREY])
    path = write_dicom(tmp_path / "cine.dcm", frames)
    assert image_io.count_frames(path) == 3
    for index in range(3):
        np.testing.assert_array_equal(image_io.read_image_file(path, frame=index), frames[index])
    with pytest.raises(
        ValueError, match=r"'cine.dcm' is a multi-frame DICOM file \(3 frames\); read one with frame=0"
    ):
        image_io.read_image_file(path)
    with pytest.raises(ValueError, match=r"'cine.dcm' has 3 frame\(s\); expected frame 0 to 2, received 3"):
        image_io.read_image_file(path, frame=3)
    assert image_io.image_file_problem(path).startswith("multi-frame DICOM file (3 frames); an index pairs")
    cv2.imwrite(str(tmp_path / "still.tif"), GREY)
    with pytest.raises(ValueError, match="'still.tif' holds one image; expected frame None or 0, received 1"):
        image_io.read_image_file(tmp_path / "still.tif", frame=1)


def test_compressed_dicom_without_its_decoder_names_the_syntax_and_what_to_install(tmp_path, monkeypatch):
    if pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(tmp_path / "jpegls.dcm", GREY, syntax=JPEGLSLossless, pixel_data=b"\xff\xd8\xff\xd9")
    _no_decoding(monkeypatch)
    message = (
        r"^'jpegls.dcm': DICOM pixel data compressed as 'JPEG-LS Lossless Image Compression' "
        r"\(1.2.840.10008.1.2.4.80\) needs a decoder that is not installed: pip install '"
    )
    with pytest.raises(ValueError, match=message) as raised:
        image_io.read_image_file(path)
    for install in ("pip install 'pylibjpeg>=", "'pylibjpeg-libjpeg>=", "pip install 'python-gdcm>="):
        assert install in str(raised.value)  # pip's names: python-gdcm, not gdcm
    with pytest.raises(ValueError, match=message):
        image_io.count_frames(path)  # refused from the header, as segment_images meets it first
    assert "needs a decoder that is not installed" in image_io.image_file_problem(path)


def test_compressed_dicom_with_its_decoder_is_read(tmp_path):
    grey = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    path = write_dicom(tmp_path / "rle.dcm", grey)
    dataset = pydicom.dcmread(path)
    dataset.compress(RLELossless)  # pydicom's own encoder and decoder: lossless, exact
    dataset.save_as(path)
    np.testing.assert_array_equal(image_io.read_image_file(path), grey)
    if not pydicom.pixels.get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder (Pillow) here")
    jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    path = write_dicom(tmp_path / "jpeg.dcm", grey, syntax=JPEGBaseline8Bit, pixel_data=jpeg)
    np.testing.assert_allclose(image_io.read_image_file(path), grey, atol=8)  # lossy: 6 grey levels here
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[8:24, 8:40] = (10, 200, 30)
    jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    path = write_dicom(tmp_path / "colour.dcm", rgb, "YBR_FULL_422", syntax=JPEGBaseline8Bit, pixel_data=jpeg)
    image = image_io.read_image_file(path)  # away from the edges, where 4:2:0 chroma blurs the colours
    np.testing.assert_allclose(image[[0, 16], [0, 24]], [[0, 0, 200], [30, 200, 10]], atol=8)


def test_damaged_compressed_dicom_is_a_clear_error(tmp_path):
    if not pydicom.pixels.get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder (Pillow) here")
    path = write_dicom(tmp_path / "broken.dcm", GREY, syntax=JPEGBaseline8Bit, pixel_data=b"\xff\xd8\xff\xd9")
    with pytest.raises(
        ValueError, match=r"'broken.dcm': DICOM pixel data \('JPEG Baseline \(Process 1\)'\) could not"
    ):
        image_io.read_image_file(path)


DICOM_PROBLEMS = [
    (
        "bomb",
        dict(pixels=GREY, rows_columns=(20000, 20000)),
        r"image of 20000x20000 pixels \(width x height\) is larger than MAX_IMAGE_PIXELS",
    ),
    (
        "truncated",
        dict(pixels=GREY, pixel_data=GREY.tobytes()[:4]),
        r"truncated DICOM file: 1 frame\(s\) of 3x2 pixels need 6 bytes of pixel data; the file holds 4",
    ),
    (
        "truncated cine",
        dict(pixels=np.stack([GREY] * 3), pixel_data=GREY.tobytes() * 2),
        r"truncated DICOM file: 3 frame\(s\) of 3x2 pixels need 18 bytes",
    ),
    (
        "palette",
        dict(pixels=GREY, photometric="PALETTE COLOR"),
        "DICOM photometric interpretation 'PALETTE COLOR'",
    ),
    ("signed", dict(pixels=GREY, signed=True), "DICOM pixel data of signed integers; expected unsigned"),
    ("32 bit", dict(pixels=GREY.astype(np.uint32)), "DICOM pixels of 32 bits stored in 32; expected 8 or 16"),
]


@pytest.mark.parametrize("case, options, message", DICOM_PROBLEMS, ids=[c[0] for c in DICOM_PROBLEMS])
def test_dicom_problems_are_named_from_the_header_before_decoding(
    tmp_path, monkeypatch, case, options, message
):
    path = write_dicom(tmp_path / "bad.dcm", **options)
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError, match=rf"^'bad.dcm': {message}"):
        image_io.read_image_file(path)
    assert image_io.image_file_problem(path) is not None


def test_files_that_are_not_dicom_images(tmp_path):
    path = write_dicom(tmp_path / "report.dcm", GREY)
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path)
    with pytest.raises(ValueError, match=r"'report.dcm': DICOM file without pixel data \(not an image"):
        image_io.read_image_file(path)
    damaged = write_dicom(tmp_path / "damaged.dcm", GREY).read_bytes()
    (tmp_path / "damaged.dcm").write_bytes(
        damaged.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00\x55\xe7")
    )
    with pytest.raises(
        ValueError, match=r"'damaged.dcm': damaged DICOM file, not readable \(NotImplementedError: "
    ):
        image_io.read_image_file(tmp_path / "damaged.dcm")
    (tmp_path / "cut.dcm").write_bytes(damaged[:200])
    with pytest.raises(
        ValueError, match=r"'cut.dcm': DICOM file without pixel data .* or a header cut short"
    ):
        image_io.read_image_file(tmp_path / "cut.dcm")
    (tmp_path / "text.dcm").write_text("not a DICOM file")
    with pytest.raises(
        ValueError, match=r"'text.dcm' could not be decoded as a PNG, JPEG, BMP, TIFF or DICOM"
    ):
        image_io.read_image_file(tmp_path / "text.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'empty.dcm': empty file \(0 bytes\)"):
        image_io.read_image_file(tmp_path / "empty.dcm")
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        image_io.read_image_file(tmp_path / "missing.dcm")


def test_index_formats_refuse_other_contents(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(cv2.imencode(".jpg", GREY)[1].tobytes())
    assert image_io.image_file_problem(path).startswith(
        "not a PNG, TIFF or DICOM file (its content is JPEG); convert it to PNG"
    )
    assert image_io.image_file_problem(path, ("png",)).startswith("not a PNG file (its content is JPEG)")
    dicom = write_dicom(tmp_path / "scan.dcm", GREY)
    assert image_io.image_file_problem(dicom, ("png",)).startswith("not a PNG file")


def test_load_image_reads_tiff_and_dicom(tmp_path):
    tiff = tmp_path / "a.tif"
    cv2.imwrite(str(tiff), GREY)
    dicom = write_dicom(tmp_path / "b.dcm", GREY)
    for path in (tiff, dicom):
        np.testing.assert_allclose(image_io.load_image(path, (2, 3))[..., 0], GREY / 255, atol=1e-6)
