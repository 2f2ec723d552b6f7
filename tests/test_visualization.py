"""Tests for visualization: figure structure, saved PNGs, exact overlay colours, input validation.

Axes are counted with `visible_axes`; grids remove their unused cells, so every axes in
`fig.axes` is a drawn panel. Figures are not registered with pyplot (checked below); the autouse
fixture still closes anything pyplot holds after each test.
"""

import math
import os

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import classification_metrics as cm
import overlays
import plot_style
import visualization as viz

SIZE = 16


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def make_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.3, 0.8, size=(n, SIZE, SIZE, 1)).astype(np.float32)


def make_masks(n: int) -> np.ndarray:
    masks = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    for i in range(n):
        masks[i, 2 + i % 8 : 8 + i % 8, 4:10, 0] = 1
    return masks


def make_index() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["benign (1)", "benign (2)", "benign (3)", "malignant (1)", "normal (1)"],
            "label": ["benign", "benign", "benign", "malignant", "normal"],
            "n_masks": [1, 2, 1, 1, 1],
            "height": [500, 480, 520, 600, 450],
            "width": [560, 500, 540, 610, 470],
        }
    )


def make_history(with_lr: bool = True) -> pd.DataFrame:
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "loss": [0.9, 0.6, 0.5, 0.45],
            "val_loss": [1.0, 0.7, 0.6, 0.65],
            "dice": [0.2, 0.5, 0.6, 0.65],
            "val_dice": [0.1, 0.4, 0.55, 0.5],
        }
    )
    if with_lr:
        history["learning_rate"] = [1e-3, 1e-3, 5e-4, 5e-4]
    return history


def make_per_image() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [
                "benign (1)",
                "benign (2)",
                "malignant (1)",
                "malignant (2)",
                "normal (1)",
                "benign (3)",
            ],
            "label": ["benign", "benign", "malignant", "malignant", "normal", "benign"],
            "dice": [0.9, 0.2, 0.7, 0.4, 1.0, np.nan],
        }
    )


def make_curve() -> pd.DataFrame:
    return pd.DataFrame({"threshold": [0.3, 0.4, 0.5, 0.6], "dice": [0.60, 0.70, 0.72, 0.65]})


def predictions(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = make_masks(n)
    y_pred = np.roll(y_true, 1, axis=2)
    return make_images(n), y_true, y_pred


def call_overview(path=None):
    return viz.plot_dataset_overview(make_index(), path=path)


def call_mask_grid(path=None):
    return overlays.plot_mask_grid(
        make_images(5), make_masks(5), titles=[f"image {i}" for i in range(5)], path=path
    )


def call_multi_mask(path=None):
    masks = [m[..., 0] for m in make_masks(3)]
    return overlays.plot_multi_mask(
        make_images(1)[0], masks, np.maximum.reduce(masks), title="benign (1)", path=path
    )


def call_augmentation(path=None):
    return overlays.plot_augmentation_preview(
        make_images(1)[0], make_masks(1)[0], make_images(3, seed=1), make_masks(3), path=path
    )


def call_training(path=None):
    return viz.plot_training_curves(make_history(with_lr=True), path=path)


def call_training_without_lr(path=None):
    return viz.plot_training_curves(make_history(with_lr=False), path=path)


def call_overlays(path=None):
    images, y_true, y_pred = predictions(5)
    titles = [overlays.overlay_title(f"benign ({i})", "benign", 0.5) for i in range(5)]
    return overlays.plot_prediction_overlays(images, y_true, y_pred, titles, path=path)


def call_best_worst(path=None):
    images, y_true, y_pred = predictions(6)
    return overlays.plot_best_worst(images, y_true, y_pred, make_per_image(), n=2, path=path)


def call_dice_distribution(path=None):
    return viz.plot_dice_distribution(make_per_image(), path=path)


def call_threshold(path=None):
    return viz.plot_threshold_curve(make_curve(), 0.5, path=path)


# (builder, expected number of visible axes)
FIGURES = {
    "overview": (call_overview, 3),
    "mask_grid": (call_mask_grid, 5),
    "multi_mask": (call_multi_mask, 4),
    "augmentation": (call_augmentation, 4),
    "training": (call_training, 3),
    "training_without_lr": (call_training_without_lr, 2),
    "overlays": (call_overlays, 5),
    "best_worst": (call_best_worst, 4),
    "dice_distribution": (call_dice_distribution, 1),
    "threshold": (call_threshold, 1),
}


@pytest.mark.parametrize("name", FIGURES)
def test_returns_figure_with_expected_axes(name):
    build, n_axes = FIGURES[name]
    fig = build()
    assert isinstance(fig, Figure)
    assert len(visible_axes(fig)) == n_axes
    assert len(fig.axes) == n_axes  # unused grid cells are removed, not hidden
    assert plt.get_fignums() == []  # nothing registered with pyplot


@pytest.mark.parametrize("name", FIGURES)
def test_saves_readable_png_without_temp_files(tmp_path, name):
    build, _ = FIGURES[name]
    path = tmp_path / "figure.png"
    build(path=path)
    image = cv2.imread(str(path))
    assert image is not None and image.size > 0
    assert os.listdir(tmp_path) == ["figure.png"]


def test_does_not_save_without_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call_threshold()
    assert os.listdir(tmp_path) == []


def test_rejects_unknown_file_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"path ending in one of \('.png', '.pdf', '.svg'\)"):
        call_threshold(path=tmp_path / "figure.jpg")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "n_panels, n_cols, geometry", [(5, 4, (2, 3)), (6, 5, (2, 3)), (3, 4, (1, 3)), (8, 4, (2, 4))]
)
def test_grid_rows_are_balanced_and_unused_cells_removed(n_panels, n_cols, geometry):
    fig = overlays.plot_mask_grid(make_images(n_panels), make_masks(n_panels), n_cols=n_cols)
    assert len(fig.axes) == n_panels
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == geometry


def test_outline_runs_along_pixel_edges_of_the_mask():
    mask = np.zeros((1, SIZE, SIZE), np.uint8)
    mask[0, 4:8, 6:12] = 1  # rows 4..7, columns 6..11
    fig = overlays.plot_mask_grid(make_images(1), mask)
    (contour,) = fig.axes[0].collections
    vertices = np.concatenate([path.vertices for path in contour.get_paths()])
    np.testing.assert_allclose(vertices[:, 0].min(), 5.5, atol=1e-9)
    np.testing.assert_allclose(vertices[:, 0].max(), 11.5, atol=1e-9)
    np.testing.assert_allclose(vertices[:, 1].min(), 3.5, atol=1e-9)
    np.testing.assert_allclose(vertices[:, 1].max(), 7.5, atol=1e-9)
    assert fig.axes[0].get_xlim() == (-0.5, SIZE - 0.5)


def test_empty_mask_draws_no_outline_and_bool_masks_without_channel_are_accepted():
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[1, 3:6, 3:6] = True
    fig = overlays.plot_mask_grid(make_images(2)[..., 0], masks)
    assert len(fig.axes[0].collections) == 0
    assert len(fig.axes[1].collections) == 1


def test_confusion_overlay_colours_tp_fp_fn_exactly():
    truth = np.array([[1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 1, 0]], np.uint8)
    layer = overlays.confusion_overlay(truth, pred, alpha=0.4)
    assert layer.shape == (1, 4, 4) and layer.dtype == np.float32
    expected = [
        to_rgba(plot_style.OVERLAY_COLORS["TP"], 0.4),
        to_rgba(plot_style.OVERLAY_COLORS["FN"], 0.4),
        to_rgba(plot_style.OVERLAY_COLORS["FP"], 0.4),
        (0.0, 0.0, 0.0, 0.0),
    ]
    np.testing.assert_allclose(layer[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "image_id, label, dice, expected",
    [
        ("benign (12)", "benign", 0.8123, "benign (12) | benign | Dice 0.81"),
        ("normal (3)", "normal", float("nan"), "normal (3) | normal | Dice n/a"),
        ("malignant (1)", "malignant", 0.0, "malignant (1) | malignant | Dice 0.00"),
    ],
)
def test_overlay_title(image_id, label, dice, expected):
    assert overlays.overlay_title(image_id, label, dice) == expected


def test_prediction_overlays_have_one_figure_legend():
    fig = call_overlays()
    assert len(fig.legends) == 1
    assert [text.get_text() for text in fig.legends[0].get_texts()] == [
        "true positive",
        "false positive",
        "false negative",
    ]
    assert all(ax.get_legend() is None for ax in fig.axes)


def test_best_worst_picks_lesion_cases_in_order_and_skips_normal_and_nan():
    fig = call_best_worst()
    titles = [ax.get_title() for ax in fig.axes]
    # dice: benign (1) 0.9, benign (2) 0.2, malignant (1) 0.7, malignant (2) 0.4; normal and NaN left out
    expected_ids = ["benign (1)", "malignant (1)", "benign (2)", "malignant (2)"]
    for title, image_id in zip(titles, expected_ids):
        assert title.startswith(image_id + " |"), (title, image_id)
    assert not any("normal" in title or "n/a" in title for title in titles)
    assert "Dice 0.90" in titles[0] and "Dice 0.20" in titles[2]
    assert len(fig.legends) == 1


def test_best_worst_shows_all_cases_when_fewer_than_n():
    images, y_true, y_pred = predictions(6)
    fig = overlays.plot_best_worst(images, y_true, y_pred, make_per_image(), n=10)
    assert len(visible_axes(fig)) == 2 * 4


def test_training_curves_mark_best_validation_epoch():
    fig = call_training()
    best_epoch = 3  # val_dice peaks at 0.55
    for ax in fig.axes:
        vertical = [
            line for line in ax.lines if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
        ]
        assert [line.get_xdata()[0] for line in vertical] == [best_epoch]
    legend_texts = [text.get_text() for text in fig.axes[1].get_legend().get_texts()]
    assert "best: epoch 3, val Dice 0.550" in legend_texts
    assert fig.axes[2].get_yscale() == "log"


def test_dice_distribution_counts_finite_values_in_tick_labels():
    fig = call_dice_distribution()
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    assert labels == ["benign\n(n=2)", "malignant\n(n=2)", "normal\n(n=1)"]
    means = [text.get_text() for text in fig.axes[0].texts]
    assert means == ["0.55", "0.55", "1.00"]


def test_threshold_curve_marks_chosen_threshold():
    fig = call_threshold()
    ax = fig.axes[0]
    assert any(list(line.get_xdata()) == [0.5, 0.5] for line in ax.lines)
    legend_texts = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(text.startswith("chosen on validation (t = 0.50") for text in legend_texts)


def test_dataset_overview_annotates_counts():
    fig = call_overview()
    bar_labels = [text.get_text() for text in fig.axes[0].texts]
    assert bar_labels == ["3", "1", "1"]


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

BAD_INPUTS = {
    "overview missing column": (
        lambda: viz.plot_dataset_overview(make_index().drop(columns="n_masks")),
        r"missing \['n_masks'\]",
    ),
    "overview empty": (lambda: viz.plot_dataset_overview(make_index().iloc[:0]), "non-empty `index_df`"),
    "overview not a frame": (lambda: viz.plot_dataset_overview([1, 2]), "pandas DataFrame; received list"),
    "overview unknown label": (
        lambda: viz.plot_dataset_overview(make_index().replace({"label": {"normal": "cyst"}})),
        r"unknown labels \['cyst'\]",
    ),
    "grid mismatched shapes": (
        lambda: overlays.plot_mask_grid(make_images(2), np.zeros((2, 8, 8, 1), np.uint8)),
        r"same shape .* \(2, 8, 8\)",
    ),
    "grid wrong ndim": (
        lambda: overlays.plot_mask_grid(make_images(1)[0, ..., 0], make_masks(1)[0, ..., 0]),
        r"\(N, H, W, 1\) or \(N, H, W\); received shape \(16, 16\)",
    ),
    "grid empty": (
        lambda: overlays.plot_mask_grid(np.zeros((0, SIZE, SIZE, 1)), np.zeros((0, SIZE, SIZE, 1))),
        "non-empty `images`",
    ),
    "grid 8-bit image": (
        lambda: overlays.plot_mask_grid(make_images(1) * 255, make_masks(1)),
        r"values in \[0, 1\].*Divide 8-bit",
    ),
    "grid wrong title count": (
        lambda: overlays.plot_mask_grid(make_images(2), make_masks(2), titles=["a"]),
        "Expected 2 titles",
    ),
    "grid bad n_cols": (lambda: overlays.plot_mask_grid(make_images(2), make_masks(2), n_cols=0), "n_cols"),
    "multi mismatched annotation": (
        lambda: overlays.plot_multi_mask(
            make_images(1)[0], [np.zeros((8, 8), np.uint8)], np.zeros((SIZE, SIZE), np.uint8)
        ),
        r"`masks\[0\]`",
    ),
    "multi mismatched merged": (
        lambda: overlays.plot_multi_mask(
            make_images(1)[0], [np.zeros((SIZE, SIZE), np.uint8)], np.zeros((SIZE, 8), np.uint8)
        ),
        "`merged`",
    ),
    "multi no annotation": (
        lambda: overlays.plot_multi_mask(make_images(1)[0], [], np.zeros((SIZE, SIZE), np.uint8)),
        "at least one annotation",
    ),
    "multi single array": (
        lambda: overlays.plot_multi_mask(
            make_images(1)[0], np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
        ),
        "list of",
    ),
    "augmentation mismatched": (
        lambda: overlays.plot_augmentation_preview(
            make_images(1)[0], make_masks(1)[0], make_images(3), make_masks(2)
        ),
        "`augmented_masks`",
    ),
    "training missing column": (
        lambda: viz.plot_training_curves(make_history().drop(columns="val_dice")),
        r"missing \['val_dice'\]",
    ),
    "training no finite val_dice": (
        lambda: viz.plot_training_curves(make_history().assign(val_dice=np.nan)),
        "at least one finite value",
    ),
    "overlays probabilities": (
        lambda: overlays.plot_prediction_overlays(
            make_images(1), make_masks(1), np.full((1, SIZE, SIZE, 1), 0.3), ["a"]
        ),
        r"`y_pred` binary values .* Threshold probabilities",
    ),
    "overlays mismatched": (
        lambda: overlays.plot_prediction_overlays(make_images(2), make_masks(2), make_masks(1), ["a", "b"]),
        "`y_pred`",
    ),
    "overlays missing titles": (
        lambda: overlays.plot_prediction_overlays(make_images(1), make_masks(1), make_masks(1), None),
        "list of 1 strings",
    ),
    "best_worst misaligned frame": (
        lambda: overlays.plot_best_worst(*predictions(5), make_per_image()),
        "one row per image",
    ),
    "best_worst only normal": (
        lambda: overlays.plot_best_worst(
            *predictions(2),
            pd.DataFrame({"image_id": ["n1", "n2"], "label": ["normal"] * 2, "dice": [1.0, 0.0]}),
        ),
        "at least one lesion case",
    ),
    "dice missing column": (
        lambda: viz.plot_dice_distribution(make_per_image().drop(columns="dice")),
        r"missing \['dice'\]",
    ),
    "dice all NaN": (
        lambda: viz.plot_dice_distribution(make_per_image().assign(dice=np.nan)),
        "at least one finite value",
    ),
    "threshold outside curve": (
        lambda: viz.plot_threshold_curve(make_curve(), 0.9),
        r"within the curve's thresholds \[0.3, 0.6\]",
    ),
    "threshold not finite": (lambda: viz.plot_threshold_curve(make_curve(), math.nan), "finite number"),
    "threshold missing column": (
        lambda: viz.plot_threshold_curve(make_curve().drop(columns="dice"), 0.5),
        r"missing \['dice'\]",
    ),
    "confusion alpha": (
        lambda: overlays.confusion_overlay(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), alpha=2),
        r"`alpha` in \[0, 1\]",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_value_error(case):
    call, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match):
        call()


def _head_outputs():
    """80 labels and (80, 3) class probabilities of a head that is mostly right."""
    rng = np.random.default_rng(0)
    labels = np.array(["benign"] * 40 + ["malignant"] * 25 + ["normal"] * 15)
    logits = rng.normal(0, 1, (80, 3))
    logits[np.arange(80), [("benign", "malignant", "normal").index(label) for label in labels]] += 1.5
    probabilities = np.exp(logits)
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)


def test_confusion_matrix_figure_writes_counts_and_row_shares(tmp_path):
    labels, probabilities = _head_outputs()
    fig = viz.plot_confusion_matrix(labels, probabilities, tmp_path / "confusion.png")
    texts = [text.get_text() for text in fig.axes[0].texts]
    counts = cm.confusion_matrix(labels, probabilities).to_numpy()
    assert len(texts) == 9 and texts[0] == f"{counts[0, 0]}\n{counts[0, 0] / 40:.0%}"
    assert (tmp_path / "confusion.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least one image"):
        viz.plot_confusion_matrix([], np.zeros((0, 3)))


def test_roc_figure_draws_both_questions_and_says_when_one_cannot_be_drawn(tmp_path):
    labels, probabilities = _head_outputs()
    fig = viz.plot_roc_curves(labels, probabilities, tmp_path / "roc.png")
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    auc = cm.roc_auc(labels != "normal", cm.lesion_score(probabilities))
    assert legend[1].startswith(f"lesion vs normal: AUC {auc:.3f}, n=80") and "n=65" in legend[2]
    assert (tmp_path / "roc.png").stat().st_size > 0
    no_malignant = labels != "malignant"
    fig = viz.plot_roc_curves(labels[no_malignant], probabilities[no_malignant])
    assert "benign vs malignant: not drawn, needs both classes" in [
        t.get_text() for t in fig.legends[0].get_texts()
    ]
    with pytest.raises(ValueError, match=r"received \['cyst'\]"):
        viz.plot_roc_curves(["cyst"] * 80, probabilities)
