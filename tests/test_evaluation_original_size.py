"""Tests for evaluation's original-size scoring (score_original_size, evaluate_original_size) and
summarize_per_image, on tiny hand-made arrays (evaluate itself: test_evaluation.py)."""

import numpy as np
import pandas as pd
import pytest

import evaluation


def _frame(labels):
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(len(labels))], "label": labels})


def test_original_size_scores_by_hand():
    # benign 10x10: 4 true pixels, 6 predicted of which 4 right -> Dice 8 / (8 + 2) = 0.8
    truth_b = np.zeros((10, 10), np.uint8)
    truth_b[0, :4] = 1
    prob_b = np.zeros((10, 10), np.float32)
    prob_b[0, :6] = 0.7
    # normal 20x5 (100 px): 2 predicted pixels, 2% of the image
    prob_n1 = np.zeros((20, 5), np.float32)
    prob_n1[3, :2] = 0.9
    # normal 50x50 (2500 px): 10 predicted pixels, 0.4% of the image; one pixel just under the threshold
    prob_n2 = np.zeros((50, 50), np.float32)
    prob_n2[7, :10] = 0.5
    prob_n2[8, 0] = 0.4999
    masks = [truth_b, np.zeros((20, 5), np.uint8), np.zeros((50, 50, 1), np.uint8)]
    per_image, summary = evaluation.evaluate_original_size(
        masks,
        [prob_b, prob_n1, prob_n2[..., None]],
        _frame(["benign", "normal", "normal"]),
        threshold=0.5,
        n_bootstrap=50,
    )
    assert list(per_image.columns) == [
        "image_id",
        "label",
        "dice",
        "iou",
        "precision",
        "recall",
        "true_area",
        "pred_area",
    ]
    np.testing.assert_allclose(per_image["dice"], [0.8, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(per_image["iou"], [4 / 6, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(per_image["precision"], [4 / 6, 0.0, 0.0], atol=1e-12)  # FP != FN: asymmetric
    np.testing.assert_allclose(per_image["recall"], [1.0, 0.0, 0.0], atol=1e-12)
    assert per_image["true_area"].tolist() == [4, 0, 0] and per_image["pred_area"].tolist() == [6, 2, 10]
    rows = summary.set_index("group")
    assert list(rows.index) == ["lesion", "benign", "normal", "all"]
    assert rows.loc["normal", "fp_fraction"] == 1.0
    assert rows.loc["normal", "fp_over_1pct_fraction"] == 0.5  # 2% counts, 0.4% does not
    assert np.isnan(rows.loc["lesion", "fp_over_1pct_fraction"])


def test_original_size_equals_evaluate_on_one_size():
    rng = np.random.default_rng(4)
    truth = (rng.random((9, 12, 16, 1)) > 0.6).astype(np.uint8)
    truth[6:] = 0
    prob = rng.random((9, 12, 16, 1)).astype(np.float32)
    frame = _frame(["benign"] * 3 + ["malignant"] * 3 + ["normal"] * 3)
    expected = evaluation.evaluate(truth, prob, frame, threshold=0.55, n_bootstrap=100, seed=2)
    got = evaluation.evaluate_original_size(
        list(truth), list(prob[..., 0]), frame, 0.55, n_bootstrap=100, seed=2
    )
    for a, b in zip(expected, got):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_summarize_per_image_counts_over_1pct_with_each_image_size():
    per_image = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "label": ["normal", "normal", "normal"],
            "dice": [0.0, 0.0, 1.0],
            "iou": [0.0, 0.0, 1.0],
            "precision": [0.0, 0.0, 1.0],
            "recall": [0.0, 0.0, 1.0],
            "true_area": [0, 0, 0],
            "pred_area": [11, 11, 0],
        }
    )
    summary = evaluation.summarize_per_image(per_image, np.array([1000, 1100, 500]), n_bootstrap=10)
    row = summary.set_index("group").loc["normal"]
    assert row["fp_fraction"] == pytest.approx(2 / 3)
    assert row["fp_over_1pct_fraction"] == pytest.approx(1 / 3)  # 11 > 10 counts; 11 = 1% of 1100 does not
    assert "with over 1% of the image 33.3%" in evaluation.format_summary(summary)
    with pytest.raises(ValueError, match=r"missing columns \['pred_area'\]"):
        evaluation.summarize_per_image(per_image.drop(columns="pred_area"), 100)


def test_original_size_errors_name_the_image():
    frame = _frame(["benign", "normal"])
    masks = [np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)]
    with pytest.raises(ValueError, match=r"one \(H, W\) shape for 'img1'; received \(5, 5\) and \(5, 4\)"):
        evaluation.score_original_size(masks, [np.zeros((4, 4)), np.zeros((5, 4))], frame)
    with pytest.raises(ValueError, match="received 2 masks, 1 maps and 2 rows"):
        evaluation.score_original_size(masks, [np.zeros((4, 4))], frame)
