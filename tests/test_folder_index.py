"""Tests for folder_index.index_folder on generated folders (every case's outcome pinned), the
flags it shares with data_loading.index_busi, and `external` checks on BUS-UCLM when present."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import data_loading as dl
import folder_index as fi
import image_io
import mask_processing
import synthetic_data

HEIGHT, WIDTH = 80, 96
GREEN, RED = (0, 255, 0), (255, 0, 0)
COLOURS = "benign=0,255,0;malignant=255,0,0"


def _image(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _lesion(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W) uint8 {0, 1}: a 10 x 20 rectangle, 200 pixels."""
    mask = np.zeros((height, width), np.uint8)
    mask[20:30, 30:50] = 1
    return mask


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    return _write(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _colour(mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return (mask[..., None] * np.array(rgb, np.uint8)).astype(np.uint8)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def binary_folders(tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """images/{a,b,c}.png with masks/a.png (0/255), masks/b_mask.png (0/1), masks/c.png (empty)."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i, name in enumerate("abc"):
        _write(images / f"{name}.png", _image(i))
    _write(masks / "a.png", _lesion() * 255)
    _write(masks / "b_mask.png", _lesion())
    _write(masks / "c.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    labels = fi.read_label_csv(
        _csv(tmp_path / "labels.csv", "file;Class\na.png;Benign\nb.png;malignant\nc;NORMAL\n"), "class"
    )
    return images, masks, labels


@pytest.fixture()
def colour_folders(tmp_path) -> tuple[Path, Path]:
    """images/{g,r,n}.png; RGB masks: g green (benign), r red (malignant), n all black (normal)."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i, name in enumerate("grn"):
        _write(images / f"{name}.png", _image(i))
    _write_rgb(masks / "g.png", _colour(_lesion(), GREEN))
    _write_rgb(masks / "r.png", _colour(_lesion(), RED))
    _write_rgb(masks / "n.png", np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    return images, masks


# ---------------------------------------------------------------- good folders


def test_binary_masks_in_two_folders_with_a_label_table(binary_folders):
    images, masks, labels = binary_folders
    df = fi.index_folder(images, masks, labels=labels)
    assert list(df.columns) == [*dl.INDEX_ROW_COLUMNS, "mask_colours"]
    assert df["image_id"].tolist() == ["a", "b", "c"]
    assert df["label"].tolist() == ["benign", "malignant", "normal"]
    assert [Path(p[0]).name for p in df["mask_paths"]] == ["a.png", "b_mask.png", "c.png"]
    assert df["n_masks"].tolist() == [1, 1, 1] and df["height"].tolist() == [HEIGHT] * 3
    assert df["flags"].tolist() == ["", "", ""] and df["mask_colours"].tolist() == ["", "", ""]
    assert df.attrs["skipped"] == [] and df.attrs["unused_labels"] == []
    loaded_images, loaded_masks = dl.load_dataset(df, (HEIGHT // 2, WIDTH // 2))
    assert loaded_images.shape == (3, HEIGHT // 2, WIDTH // 2, 1)
    assert loaded_masks.reshape(3, -1).sum(axis=1).tolist() == [50, 50, 0]  # 200 pixels, a quarter kept


def test_index_busi_has_the_same_columns(tmp_path):
    root = synthetic_data.make_synthetic_busi(tmp_path, n_benign=2, n_malignant=1, n_normal=1, n_duplicates=0)
    assert list(dl.index_busi(root).columns) == list(dl.INDEX_ROW_COLUMNS)


def test_one_folder_with_a_suffix_merges_numbered_masks(tmp_path):
    folder = tmp_path / "data"
    _write(folder / "x.png", _image())
    _write(folder / "x_seg.png", _lesion() * 255)
    second = np.zeros((HEIGHT, WIDTH), np.uint8)
    second[60:70, 0:10] = 255
    _write(folder / "x_seg_1.png", second)
    (folder / "notes.txt").write_text("not an image")
    df = fi.index_folder(folder, labels={"x": "benign"}, mask_suffix="_seg")
    assert df["image_id"].tolist() == ["x"] and df["n_masks"].tolist() == [2]
    assert image_io.read_mask(df["mask_paths"][0]).sum() == 200 + 100  # the union
    assert df.attrs["ignored"] == [str(folder / "notes.txt")]


def _rgba_mask(mask):
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but transparent outside the lesion
    rgba[..., 3] = mask * 255
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)


BINARY_ENCODINGS = {
    "0/255 grey": lambda m: m * 255,
    "0/1 grey": lambda m: m,
    "16-bit 0/65535": lambda m: m.astype(np.uint16) * 65535,
    "RGB 0/255": lambda m: np.repeat(m[..., None] * 255, 3, axis=2),
    "RGBA, alpha 0 is background": _rgba_mask,
}


@pytest.mark.parametrize("encoding", BINARY_ENCODINGS, ids=list(BINARY_ENCODINGS))
def test_binary_mask_encodings_decode_to_the_same_mask(tmp_path, encoding):
    _write(tmp_path / "images" / "a.png", _image())
    _write(tmp_path / "masks" / "a.png", BINARY_ENCODINGS[encoding](_lesion()))
    df = fi.index_folder(tmp_path / "images", tmp_path / "masks", labels={"a.png": "benign"})
    np.testing.assert_array_equal(image_io.read_mask(df["mask_paths"][0]), _lesion())
    assert df["flags"][0] == ""


def test_colour_coded_masks_give_the_label_and_an_empty_mask_means_normal(colour_folders):
    images, masks = colour_folders
    df = fi.index_folder(images, masks, mask_colours=COLOURS)
    assert df.set_index("image_id")["label"].to_dict() == {"g": "benign", "r": "malignant", "n": "normal"}
    assert df["mask_colours"].tolist() == [COLOURS] * 3
    _, loaded = dl.load_dataset(df, (HEIGHT, WIDTH))
    assert loaded.reshape(3, -1).sum(axis=1).tolist() == [200, 0, 200]  # g, n, r
    assert set(np.unique(loaded).tolist()) == {0, 1}


def test_colour_coded_rgba_and_16_bit_masks(tmp_path):
    _write(tmp_path / "images" / "a.png", _image())
    _write(tmp_path / "images" / "b.png", _image(1))
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., :3] = (12, 34, 56)  # an unknown colour, but fully transparent: background
    rgba[_lesion() == 1] = (255, 0, 0, 255)
    _write(tmp_path / "masks" / "a.png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    _write(
        tmp_path / "masks" / "b.png",
        cv2.cvtColor(_colour(_lesion(), GREEN), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257,
    )
    df = fi.index_folder(
        tmp_path / "images", tmp_path / "masks", mask_colours={"malignant": RED, "benign": GREEN}
    )
    assert df["label"].tolist() == ["malignant", "benign"]
    assert df["mask_colours"][0] == "malignant=255,0,0;benign=0,255,0"
    np.testing.assert_array_equal(image_io.read_mask(df["mask_paths"][1], df["mask_colours"][1]), _lesion())


def test_labels_from_the_table_and_the_colours_must_agree(colour_folders, tmp_path):
    images, masks = colour_folders
    labels = {"g.png": "benign", "r.png": "malignant", "n.png": "normal", "extra.png": "benign"}
    df = fi.index_folder(images, masks, labels=labels, mask_colours=COLOURS)
    assert df["label"].tolist() == ["benign", "normal", "malignant"]  # g, n, r in natural name order
    assert df.attrs["unused_labels"] == ["extra.png"]
    assert "label entries without an image: 1" in dl.format_index_summary(dl.summarize_index(df))


# ---------------------------------------------------------------- problems: named, raised or skipped


def _larger_mask(images, masks):
    _write(masks / "a.png", np.zeros((HEIGHT + 10, WIDTH + 4), np.uint8))


def _smaller_mask(images, masks):
    _write(masks / "a.png", np.zeros((HEIGHT - 10, WIDTH - 4), np.uint8))


def _missing_mask(images, masks):
    (masks / "b_mask.png").unlink()


def _orphan_mask(images, masks):
    _write(masks / "d.png", _lesion() * 255)


def _anti_aliased(images, masks):
    _write(masks / "a.png", cv2.GaussianBlur(_lesion() * 255, (5, 5), 1.5))


def _two_masks(images, masks):
    _write(masks / "b.png", _lesion() * 255)


def _truncated_image(images, masks):
    path = images / "c.png"
    path.write_bytes(path.read_bytes()[:100])


def _jpeg_mask(images, masks):
    (masks / "a.png").write_bytes(cv2.imencode(".jpg", _lesion() * 255)[1].tobytes())


# (case, corruption, the file named, what the message says) on `binary_folders`; each one bad file.
BINARY_PROBLEMS = [
    (
        "mask larger than its image",
        _larger_mask,
        "masks/a.png",
        f"mask size {WIDTH + 4}x{HEIGHT + 10} differs from its image 'a.png' ({WIDTH}x{HEIGHT}, width x "
        f"height); the mask is larger than the image. Masks are never stretched",
    ),
    (
        "mask smaller than its image",
        _smaller_mask,
        "masks/a.png",
        f"mask size {WIDTH - 4}x{HEIGHT - 10} differs from its image 'a.png' ({WIDTH}x{HEIGHT}, width x "
        f"height); the mask is smaller than the image",
    ),
    (
        "image without its mask",
        _missing_mask,
        "images/b.png",
        "image without any mask (expected 'b.png' or 'b_mask.png' in",
    ),
    ("mask without its image", _orphan_mask, "masks/d.png", "mask without its image (expected 'd.png' in"),
    (
        "anti-aliased binary mask",
        _anti_aliased,
        "masks/a.png",
        "mask is not binary after binarisation: Expected a binary mask",
    ),
    (
        "two masks for one image",
        _two_masks,
        "masks/b_mask.png",
        "two masks for one image: 'b.png' and 'b_mask.png'",
    ),
    ("truncated image", _truncated_image, "images/c.png", "unreadable or truncated PNG"),
    ("JPEG named .png", _jpeg_mask, "masks/a.png", "not a PNG file (its content is JPEG)"),
]


@pytest.mark.parametrize(
    "case, corrupt, bad_file, reason", BINARY_PROBLEMS, ids=[c[0] for c in BINARY_PROBLEMS]
)
def test_a_bad_pair_is_named_then_raised_or_skipped_and_counted(
    binary_folders, case, corrupt, bad_file, reason
):
    images, masks, labels = binary_folders
    corrupt(images, masks)
    named = f"'{images.parent / bad_file}': {reason}"
    with pytest.raises(ValueError, match=r"Found 1 problem\(s\) in .*\n  - " + re.escape(named)):
        fi.index_folder(images, masks, labels=labels)
    df = fi.index_folder(images, masks, labels=labels, on_error="skip")
    skipped = df.attrs["skipped"]
    assert len(skipped) == 1 and skipped[0]["file"] == str(images.parent / bad_file)
    assert len(df) == 3 - (case != "mask without its image")
    assert f"skipped: 1\n  - {images.parent / bad_file}: {reason}" in dl.format_index_summary(
        dl.summarize_index(df)
    )


def _unknown_colours(images, masks):
    rgb = _colour(_lesion(), GREEN)
    rgb[0, :3] = (255, 255, 255)
    rgb[1, :1] = (0, 128, 0)
    _write_rgb(masks / "g.png", rgb)


def _both_colours(images, masks):
    rgb = _colour(_lesion(), GREEN)
    rgb[70:75, 0:4] = RED
    _write_rgb(masks / "g.png", rgb)


COLOUR_PROBLEMS = [
    (
        "unknown colours listed",
        _unknown_colours,
        {},
        "mask has unknown colours: Expected mask colours black (0, 0, 0) (background), benign (0, 255, 0), "
        "malignant (255, 0, 0) (RGB); received unknown colours (255, 255, 255) x 3 px, (0, 128, 0) x 1 px "
        "in 'g.png'",
    ),
    (
        "both lesion colours in one mask",
        _both_colours,
        {},
        "mask holds the colours of benign and malignant; its label is ambiguous",
    ),
    (
        "table and colour disagree",
        lambda i, m: None,
        {"g": "malignant", "r": "malignant", "n": "normal"},
        "the label table says 'malignant' but the mask is coloured benign",
    ),
]


@pytest.mark.parametrize(
    "case, corrupt, labels, reason", COLOUR_PROBLEMS, ids=[c[0] for c in COLOUR_PROBLEMS]
)
def test_colour_problems_are_named(colour_folders, case, corrupt, labels, reason):
    images, masks = colour_folders
    corrupt(images, masks)
    with pytest.raises(ValueError, match=re.escape(f"'{masks / 'g.png'}': {reason}")):
        fi.index_folder(images, masks, labels=labels or None, mask_colours=COLOURS)
    df = fi.index_folder(images, masks, labels=labels or None, mask_colours=COLOURS, on_error="skip")
    assert df["image_id"].tolist() == ["n", "r"] and len(df.attrs["skipped"]) == 1


@pytest.mark.parametrize(
    "labels, reason",
    [
        (
            {"a": "benign", "b": "malignant"},
            "'{images}/c.png': no label for 'c.png' (nor 'c') in the label table",
        ),
        (
            {"a": "benign", "b": "malignant", "c": "cyst"},
            "'{images}/c.png': label 'cyst' in the label table is not one of "
            "('benign', 'malignant', 'normal')",
        ),
    ],
)
def test_a_missing_or_unknown_label_is_named(binary_folders, labels, reason):
    images, masks, _ = binary_folders
    with pytest.raises(ValueError, match=re.escape(reason.format(images=images))):
        fi.index_folder(images, masks, labels=labels)


# ---------------------------------------------------------------- flags


def test_flags_name_empty_lesion_masks_lesions_on_normals_and_tiny_images(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for name in ("empty", "ok", "spot"):
        _write(images / f"{name}.png", _image())
    _write(images / "thumb.png", _image(height=40, width=120))
    _write(masks / "empty.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    _write(masks / "ok.png", _lesion() * 255)
    _write(masks / "spot.png", _lesion() * 255)
    _write(masks / "thumb.png", _lesion(40, 120) * 255)
    labels = {"empty": "benign", "ok": "malignant", "spot": "normal", "thumb": "benign"}
    df = fi.index_folder(images, masks, labels=labels)
    assert df.set_index("image_id")["flags"].to_dict() == {
        "empty": "empty_lesion_mask",
        "ok": "",
        "spot": "normal_with_lesion",
        "thumb": "tiny_image",
    }
    summary = dl.summarize_index(df)
    assert summary["flagged"] == {
        "empty_lesion_mask": ["empty"],
        "normal_with_lesion": ["spot"],
        "tiny_image": ["thumb"],
    }
    report = dl.format_index_summary(summary)
    assert "flagged: 3\n" in report
    assert "  - empty_lesion_mask (benign or malignant image whose merged mask is empty): 1: empty" in report
    assert "  - tiny_image (a side under MIN_SCAN_SIDE (64 px)" in report
    # Without decoding, only the size can be checked.
    quick = fi.index_folder(images, masks, labels=labels, check_pixels=False)
    assert quick["flags"].tolist() == ["", "", "", "tiny_image"]


def test_index_busi_flags_an_empty_lesion_mask_only_when_decoding(tmp_path):
    root = synthetic_data.make_synthetic_busi(tmp_path, n_benign=3, n_malignant=2, n_normal=2, n_duplicates=0)
    path = root / "malignant" / "malignant (1)_mask.png"
    _write(path, np.zeros_like(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)))
    df = dl.index_busi(root)
    assert df.loc[df["flags"] != "", "image_id"].tolist() == ["malignant (1)"]
    assert dl.summarize_index(df)["flagged"] == {"empty_lesion_mask": ["malignant (1)"]}
    assert (dl.index_busi(root, check_pixels=False)["flags"] == "").all()


@pytest.mark.parametrize(
    "label, height, width, lesion_pixels, flags",
    [
        ("benign", 500, 500, 0, "empty_lesion_mask"),
        ("malignant", 500, 500, 1, ""),
        ("normal", 500, 500, 0, ""),
        ("normal", 500, 500, 3, "normal_with_lesion"),
        ("benign", 63, 500, None, "tiny_image"),
        ("benign", 64, 64, None, ""),
        ("malignant", 10, 10, 0, "empty_lesion_mask,tiny_image"),
    ],
)
def test_image_flags_table(label, height, width, lesion_pixels, flags):
    assert dl.image_flags(label, height, width, lesion_pixels) == flags


# ---------------------------------------------------------------- arguments and colour maps


def test_argument_errors_are_named(binary_folders, tmp_path):
    images, masks, labels = binary_folders
    with pytest.raises(ValueError, match="Binary masks do not tell benign from malignant"):
        fi.index_folder(images, masks)
    with pytest.raises(FileNotFoundError, match="Mask folder not found: '.*nowhere'"):
        fi.index_folder(images, tmp_path / "nowhere", labels=labels)
    with pytest.raises(ValueError, match=r"on_error in \('raise', 'skip'\)"):
        fi.index_folder(images, masks, labels=labels, on_error="ignore")
    with pytest.raises(ValueError, match="need check_pixels=True"):
        fi.index_folder(images, masks, mask_colours=COLOURS, check_pixels=False)
    with pytest.raises(ValueError, match="Expected a mask_suffix"):
        fi.index_folder(images, labels=labels, mask_suffix="")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "benign=0,255",
            r"Expected mask colours like 'benign=0,255,0;malignant=255,0,0'.*bad part 'benign=0,255'",
        ),
        ("benign 0,255,0", "bad part 'benign 0,255,0'"),
        ("cyst=0,255,0", r"labels from \('benign', 'malignant'\), each once.*received labels \['cyst'\]"),
        ("normal=1,1,1", r"received labels \['normal'\]"),
        ("benign=0,255,0;benign=0,0,255", r"received labels \['benign', 'benign'\]"),
        ("benign=0,256,0", r"three values in \[0, 255\].*'benign'; received \(0, 256, 0\)"),
        ("benign=0,0,0", r"not black \(the background\)"),
        ("benign=1,2,3;malignant=1,2,3", "a different colour for each label"),
        ("", "received labels \\[\\]"),
    ],
)
def test_bad_colour_maps_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        image_io.parse_mask_colours(text)


def test_colour_map_text_round_trips():
    colours = image_io.parse_mask_colours(" Malignant = 255, 0, 0 ; benign=0,255,0 ")
    assert colours == {"malignant": (255, 0, 0), "benign": (0, 255, 0)}
    assert image_io.parse_mask_colours(image_io.format_mask_colours(colours)) == colours


def test_decode_colour_mask_by_hand():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = GREEN
    rgb[1, 2] = RED
    mask, labels = mask_processing.decode_colour_mask(rgb, {"malignant": RED, "benign": GREEN})
    assert mask.tolist() == [[1, 0, 0], [0, 0, 1]] and mask.dtype == np.uint8
    assert labels == ["malignant", "benign"]
    rgb[0, 1] = (0, 254, 0)
    with pytest.raises(ValueError, match=r"unknown colours \(0, 254, 0\) x 1 px in 'm.png'"):
        mask_processing.decode_colour_mask(rgb, {"benign": GREEN, "malignant": RED}, "m.png")


def test_read_label_csv_finds_columns_and_names_what_is_missing(tmp_path):
    path = _csv(tmp_path / "info.csv", "Image;Resolution;Label\nx.png;10x10;Benign\ny.png;10x10;Normal\n")
    assert fi.read_label_csv(path, "Label") == {"x.png": "Benign", "y.png": "Normal"}
    assert fi.read_label_csv(path, "label") == fi.read_label_csv(path, "Label", image_column="image")
    with pytest.raises(
        ValueError, match=r"Expected a column 'class' in '.*info.csv'; found columns \['Image', "
    ):
        fi.read_label_csv(path, "class")
    clash = _csv(tmp_path / "clash.csv", "image,label\nx.png,benign\nx.png,malignant\n")
    with pytest.raises(ValueError, match="gives image 'x.png' two labels: 'benign' and 'malignant'"):
        fi.read_label_csv(clash)
    with pytest.raises(FileNotFoundError, match="Label table not found"):
        fi.read_label_csv(tmp_path / "none.csv")


def test_find_external_root(tmp_path, monkeypatch):
    monkeypatch.setenv(fi.EXTERNAL_ROOT_VARIABLE, str(tmp_path))
    assert fi.find_external_root() == tmp_path
    with pytest.raises(FileNotFoundError, match=r"BUS-UCLM not found at '.*nowhere' \(from data_dir\)"):
        fi.find_external_root(tmp_path / "nowhere")


# ---------------------------------------------------------------- the real external set


@pytest.fixture(scope="module")
def external_root() -> Path:
    try:
        found = fi.find_external_root()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    if found is None:
        pytest.skip(f"BUS-UCLM not found at {fi.SHARED_EXTERNAL} (set {fi.EXTERNAL_ROOT_VARIABLE} to run it)")
    return found


@pytest.mark.external
def test_bus_uclm_indexes_with_labels_from_the_mask_colours(external_root):
    df = fi.index_folder(external_root / "images", external_root / "masks", mask_colours=COLOURS)
    assert df["label"].value_counts().to_dict() == {"normal": 161, "benign": 64, "malignant": 51}
    assert df.attrs["skipped"] == [] and (df["flags"] == "").all()
    assert set(zip(df["height"], df["width"])) == {(606, 856)}
    table = fi.read_label_csv(external_root / "INFO.csv", "Label")
    assert {Path(p).name: label.lower() for p, label in zip(df["image_path"], df["label"])} == {
        k: v.lower() for k, v in table.items()
    }


# ---------------------------------------------------------------- clinic formats: TIFF and DICOM images


def test_tiff_and_dicom_images_index_and_load_like_png(tmp_path):
    from clinic_files import write_dicom

    images, masks = tmp_path / "images", tmp_path / "masks"
    grey = _image(0)
    _write(images / "a.tif", grey)
    _write(images / "b.tiff", grey.astype(np.uint16) * 257)  # 16 bit: the same grey levels
    images.mkdir(exist_ok=True)
    write_dicom(images / "c.dcm", grey)
    write_dicom(images / "d.dicom", 255 - grey, photometric="MONOCHROME1")  # reads back as `grey`
    write_dicom(images / "e.dcm", grey.astype(np.uint16) * 16 + 8, bits_stored=12)  # 12 bit, scaled
    _write(images / "f.png", grey)
    for name in "abcdef":
        _write(masks / f"{name}.png", _lesion() * 255)
    labels = {name: "benign" for name in "abcdef"}
    df = fi.index_folder(images, masks, labels=labels)
    assert df["image_id"].tolist() == list("abcdef") and df.attrs["skipped"] == []
    assert [Path(p).name for p in df["image_path"]] == [
        "a.tif",
        "b.tiff",
        "c.dcm",
        "d.dicom",
        "e.dcm",
        "f.png",
    ]
    assert df["height"].tolist() == [HEIGHT] * 6 and df["width"].tolist() == [WIDTH] * 6
    header_only = fi.index_folder(images, masks, labels=labels, check_pixels=False)
    assert header_only["height"].tolist() == [HEIGHT] * 6 and header_only["width"].tolist() == [WIDTH] * 6
    loaded, loaded_masks = dl.load_dataset(df, (HEIGHT, WIDTH))
    for i in (0, 1, 2, 3, 5):
        np.testing.assert_allclose(loaded[i, ..., 0], grey / 255, atol=1e-6)  # the same grey levels
    stored = grey.astype(np.int64) * 16 + 8  # 12 bit, scaled to 16 bit: round(v * 65535 / 4095)
    np.testing.assert_allclose(loaded[4, ..., 0], (stored * 65535 + 2047) // 4095 / 65535, atol=1e-6)
    assert loaded_masks.reshape(6, -1).sum(axis=1).tolist() == [200] * 6


def test_clinic_format_problems_are_named(tmp_path):
    import pydicom.pixels
    from clinic_files import write_dicom
    from pydicom.uid import JPEGLSLossless

    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("cine", "twin", "jpegls", "ok", "mask_tif"):
        _write(folder / f"{name}_mask.png", _lesion() * 255)
    write_dicom(folder / "cine.dcm", np.stack([_image(1), _image(2)]))
    _write(folder / "twin.png", _image(3))
    _write(folder / "twin.tif", _image(3))
    write_dicom(folder / "jpegls.dcm", _image(4), syntax=JPEGLSLossless, pixel_data=b"\xff\xd8\xff\xd9")
    write_dicom(folder / "ok.dcm", _image(5))
    _write(folder / "mask_tif.tif", _image(6))
    (folder / "mask_tif_mask.png").unlink()
    _write(folder / "mask_tif_mask.tif", _lesion() * 255)  # masks must be PNG
    labels = {name: "malignant" for name in ("cine", "twin", "jpegls", "ok", "mask_tif")}
    df = fi.index_folder(folder, labels=labels, on_error="skip")
    assert df["image_id"].tolist() == ["ok", "twin"]
    reasons = {Path(s["file"]).name: s["reason"] for s in df.attrs["skipped"]}
    assert reasons["twin.tif"] == "two images named 'twin': 'twin.png' and 'twin.tif'; keep one"
    assert reasons["cine.dcm"] == (
        "multi-frame DICOM file (2 frames); an index pairs one image with its masks: export each frame as its "
        "own file"
    )
    assert reasons["mask_tif_mask.tif"].startswith("not a PNG file (its content is TIFF); convert it to PNG")
    assert "'JPEG-LS Lossless Image Compression' (1.2.840.10008.1.2.4.80)" in reasons["jpegls.dcm"]
    if not pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        assert "needs a decoder that is not installed: pip install" in reasons["jpegls.dcm"]
    assert len(reasons) == 4
