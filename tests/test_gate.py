"""Tests for gate: the lesion-free rules with and without the head, and their choice on hand-made images."""

import numpy as np
import pandas as pd
import pytest

import evaluation
import gate

MASK_THRESHOLD = 0.5


def four_images():
    """Four 1x4 images, by hand: truths, probabilities and class probabilities (benign, malignant, normal).

    image 0: normal, no pixel >= 0.5 (Dice 1), p_normal 0.9 -> lesion probability 0.1, peak 0.2, area 0
    image 1: normal, one false pixel (Dice 0), p_normal 0.7 -> 0.3, peak 0.6, area 1
    image 2: lesion of 2 pixels found exactly (Dice 1), p_normal 0.2 -> 0.8, peak 0.9, area 2
    image 3: lesion of 4 pixels, 2 found (Dice 2*2 / (2+4) = 2/3), p_normal 0.6 -> 0.4, peak 0.7, area 2
    """
    truth = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.uint8)[:, None, :, None]
    probabilities = np.array(
        [[0.1, 0.2, 0.1, 0.1], [0.6, 0.1, 0.0, 0.0], [0.9, 0.8, 0.0, 0.0], [0.7, 0.7, 0.0, 0.0]], np.float32
    )[:, None, :, None]
    classes = np.array([[0.05, 0.05, 0.9], [0.2, 0.1, 0.7], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6]])
    return truth, probabilities, classes


def test_gate_threshold_is_chosen_by_the_mean_dice_over_all_images_by_hand():
    truth, probabilities, classes = four_images()

    threshold, curve = gate.choose_gate_threshold(
        truth, probabilities, classes, MASK_THRESHOLD, [0.0, 0.2, 0.35, 0.5, 0.9], criterion="mean_dice"
    )

    # 0: nothing gated (1 + 0 + 1 + 2/3) / 4; 0.2 gates image 0 (already right); 0.35 also image 1
    # (a normal image kept empty: 0 -> 1); 0.5 also image 3 (a lesion missed: 2/3 -> 0); 0.9 all.
    np.testing.assert_allclose(
        curve["dice"], [(8 / 3) / 4, (8 / 3) / 4, (11 / 3) / 4, 3 / 4, 2 / 4], atol=1e-12
    )
    np.testing.assert_allclose(curve["gated_fraction"], [0, 0.25, 0.5, 0.75, 1.0])
    # Normal image 1 has a false pixel until 0.35 gates it; lesion 3 (2/3) is lost from 0.5, lesion 2 (1) at 0.9.
    np.testing.assert_allclose(curve["normal_false_lesion"], [1 / 2, 1 / 2, 0, 0, 0])
    np.testing.assert_allclose(curve["lesion_dice_drop"], [0, 0, 0, (2 / 3) / 2, (1 + 2 / 3) / 2], atol=1e-12)
    assert threshold == 0.35
    # Here both criteria agree: 0.35 keeps every normal image empty at no cost to the lesions.
    default, _ = gate.choose_gate_threshold(
        truth, probabilities, classes, MASK_THRESHOLD, curve["gate_threshold"]
    )
    assert default == 0.35


@pytest.mark.parametrize(
    ("criterion", "max_drop", "expected"),
    [
        ("mean_dice", 0.02, 0.5),  # 1 normal image kept empty outweighs 2/3 of one lesion's Dice
        ("min_false_lesion", 0.02, 0.0),  # that costs (2/3) / 2 of mean lesion Dice: more than 0.02
        ("min_false_lesion", 0.4, 0.5),  # within 0.4: no false lesion left
        ("min_false_lesion", 0.0, 0.0),  # no loss accepted, and 0.2 gates only a normal image kept empty
    ],
)
def test_the_constrained_criterion_refuses_a_gate_that_costs_more_lesion_dice_than_allowed(
    criterion, max_drop, expected
):
    truth, probabilities, classes = four_images()
    # Lesion probabilities (1 - p_normal) 0.1, 0.45, 0.8, 0.4: the false lesion of normal image 1
    # is gated only with the 2/3 Dice of lesion image 3.
    classes = np.array([[0.05, 0.05, 0.9], [0.25, 0.2, 0.55], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6]])
    thresholds = [0.0, 0.2, 0.42, 0.5, 0.9]

    threshold, curve = gate.choose_gate_threshold(
        truth, probabilities, classes, MASK_THRESHOLD, thresholds, criterion=criterion, max_drop=max_drop
    )

    np.testing.assert_allclose(curve["normal_false_lesion"], [1 / 2, 1 / 2, 1 / 2, 0, 0])
    np.testing.assert_allclose(curve["lesion_dice_drop"], [0, 0, 1 / 3, 1 / 3, 5 / 6], atol=1e-12)
    np.testing.assert_allclose(curve["dice"], [(8 / 3) / 4, (8 / 3) / 4, 2 / 4, 3 / 4, 2 / 4], atol=1e-12)
    assert threshold == expected


def test_a_tie_goes_to_the_threshold_that_gates_fewer_images():
    truth, probabilities, classes = four_images()
    for criterion in gate.CRITERIA:
        threshold, curve = gate.choose_gate_threshold(
            truth, probabilities, classes, MASK_THRESHOLD, [0.2, 0.0], criterion=criterion
        )
        assert curve["dice"].nunique() == curve["normal_false_lesion"].nunique() == 1
        assert threshold == 0.0


def test_the_rule_without_a_head_is_chosen_by_the_same_criterion_by_hand():
    truth, probabilities, classes = four_images()

    max_probability, min_area, curve = gate.choose_mask_rule(
        truth, probabilities, MASK_THRESHOLD, [0.0, 0.65, 0.75], [0, 2, 3], criterion="mean_dice"
    )

    rows = curve.set_index(["max_probability", "min_area"])
    assert rows.loc[(0.0, 0), "dice"] == pytest.approx((8 / 3) / 4)  # no gate
    assert rows.loc[(0.0, 2), "dice"] == pytest.approx((11 / 3) / 4)  # areas 0 and 1 emptied
    assert rows.loc[(0.65, 0), "dice"] == pytest.approx((11 / 3) / 4)  # peaks 0.2 and 0.6 emptied
    assert rows.loc[(0.75, 0), "dice"] == pytest.approx(3 / 4)  # peak 0.7 of a lesion too
    assert rows.loc[(0.0, 3), "dice"] == pytest.approx(2 / 4)  # every area is under 3
    # Two rules tie at 11/12, gating the same two images: the smaller parameters win.
    assert (max_probability, min_area) == (0.0, 2)
    np.testing.assert_array_equal(
        gate.lesion_free_by_mask(probabilities, MASK_THRESHOLD, 0.65, 0), [True, True, False, False]
    )
    # By the default criterion too: the same three rules leave no false lesion at no lesion Dice lost.
    best = rows[rows["normal_false_lesion"].eq(0) & rows["lesion_dice_drop"].eq(0)]
    assert best.index.tolist() == [(0.0, 2), (0.65, 0), (0.65, 2)]
    default = gate.choose_mask_rule(truth, probabilities, MASK_THRESHOLD, [0.0, 0.65, 0.75], [0, 2, 3])
    assert default[:2] == (0.0, 2)


def test_without_a_candidate_within_the_allowed_drop_the_smallest_drop_wins():
    truth, probabilities, classes = four_images()
    # No candidate never gates: (0.75, 2) empties images 0, 1 and 3 (drop 1/3), (0.75, 3) all four (5/6).
    max_probability, min_area, curve = gate.choose_mask_rule(
        truth, probabilities, MASK_THRESHOLD, [0.75], [2, 3]
    )
    np.testing.assert_allclose(curve["lesion_dice_drop"], [1 / 3, 5 / 6], atol=1e-12)
    assert (max_probability, min_area) == (0.75, 2)


def test_apply_gate_empties_the_lesion_free_images_and_gated_dice_scores_them():
    truth, probabilities, classes = four_images()
    lesion_free = gate.lesion_free_by_class(classes, 0.5)
    np.testing.assert_array_equal(lesion_free, [True, True, False, True])

    gated = gate.apply_gate(probabilities, lesion_free)

    assert gated.dtype == probabilities.dtype and gated.shape == probabilities.shape
    assert not gated[lesion_free].any()
    np.testing.assert_array_equal(gated[2], probabilities[2])
    np.testing.assert_allclose(
        gate.gated_dice(truth, probabilities, MASK_THRESHOLD, lesion_free), [1, 1, 1, 0]
    )
    assert probabilities[1].max() == np.float32(0.6)  # the input is not changed


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t, p, c: gate.lesion_free_by_class(c, 1.0), r"gate_threshold in \[0, 1\); received 1.0"),
        (
            lambda t, p, c: gate.lesion_free_by_mask(p, 0.0, 0.5, 0),
            r"mask_threshold in \(0, 1\); received 0.0",
        ),
        (lambda t, p, c: gate.lesion_free_by_mask(p, 0.5, 0.5, -1), r"min_area to be an integer >= 0"),
        (lambda t, p, c: gate.apply_gate(p, [1, 0, 0, 1]), r"lesion_free as \(4,\) bool"),
        (
            lambda t, p, c: gate.choose_gate_threshold(t, p, c, 0.5, []),
            r"at least one candidate in thresholds",
        ),
        (
            lambda t, p, c: gate.choose_gate_threshold(t, p, c[:3], 0.5),
            r"one row of class probabilities per image \(4\)",
        ),
        (lambda t, p, c: gate.choose_gate_threshold(t, p, c[:, :2], 0.5), r"shape \('N', 3\)"),
        (
            lambda t, p, c: gate.choose_gate_threshold(t, p, c, 0.5, criterion="dice"),
            r"criterion to be one of \('min_false_lesion', 'mean_dice'\); received 'dice'",
        ),
        (lambda t, p, c: gate.choose_mask_rule(t, p, 0.5, max_drop=2), r"max_drop in \[0, 1\]"),
    ],
)
def test_bad_arguments_are_refused_naming_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call(*four_images())


def test_compare_rules_scores_each_gate_by_hand():
    truth, probabilities, classes = four_images()
    frame = pd.DataFrame({"image_id": list("abcd"), "label": ["normal", "normal", "benign", "malignant"]})
    rules = {"no gate": np.zeros(4, bool), "head": gate.lesion_free_by_class(classes, 0.35)}

    comparison = gate.compare_rules(truth, probabilities, frame, MASK_THRESHOLD, rules, n_bootstrap=100)

    rows = comparison.set_index("rule")
    assert rows["gated"].tolist() == [0, 2]
    np.testing.assert_allclose(rows["lesion_dice"], [(1 + 2 / 3) / 2] * 2)  # lesions untouched by this gate
    np.testing.assert_allclose(rows["specificity"], [1 / 2, 1.0])  # image 1 kept empty by the gate
    np.testing.assert_allclose(rows["detection_rate"], [1.0, 1.0])
    np.testing.assert_allclose(rows["dice_all"], [(8 / 3) / 4, (11 / 3) / 4])
    assert "lesions found 100.0%" in gate.format_comparison(comparison)


def test_gating_a_per_image_table_equals_scoring_the_gated_probabilities():
    truth, probabilities, classes = four_images()
    frame = pd.DataFrame({"image_id": list("abcd"), "label": ["normal", "normal", "benign", "malignant"]})
    lesion_free = np.array([False, True, False, True])  # a normal image kept empty, a lesion missed
    per_image, _ = evaluation.evaluate(truth, probabilities, frame, MASK_THRESHOLD, n_bootstrap=10)

    gated = gate.gate_per_image(per_image, lesion_free)

    expected, _ = evaluation.evaluate(
        truth, gate.apply_gate(probabilities, lesion_free), frame, MASK_THRESHOLD, n_bootstrap=10
    )
    pd.testing.assert_frame_equal(gated, expected)
    np.testing.assert_allclose(gated["dice"], [1, 1, 1, 0])  # image 1: 0 -> 1; image 3: 2/3 -> 0
    with pytest.raises(ValueError, match=r"missing columns \['true_area'\]"):
        gate.gate_per_image(per_image.drop(columns="true_area"), lesion_free)


def test_compare_per_image_counts_normal_images_with_a_false_lesion_by_hand():
    truth, probabilities, classes = four_images()
    frame = pd.DataFrame({"image_id": list("abcd"), "label": ["normal", "normal", "benign", "malignant"]})
    per_image, _ = evaluation.evaluate(truth, probabilities, frame, MASK_THRESHOLD, n_bootstrap=10)
    rules = {"no gate": np.zeros(4, bool), "all": np.ones(4, bool)}

    rows = gate.compare_per_image(per_image, rules, n_bootstrap=100).set_index("rule")

    # No gate: image 1 (normal) has a false pixel -> 1 of 2 normal images; all gated: none, lesions lost.
    np.testing.assert_allclose(rows["normal_false_lesion"], [1 / 2, 0.0])
    np.testing.assert_allclose(rows["normal_false_lesion"], 1 - rows["specificity"])
    np.testing.assert_allclose(rows["normal_false_lesion_ci_low"], 1 - rows["specificity_ci_high"])
    np.testing.assert_allclose(rows["lesion_dice"], [(1 + 2 / 3) / 2, 0.0])
    np.testing.assert_allclose(rows["detection_rate"], [1.0, 0.0])
    assert rows["gated"].tolist() == [0, 4]


def test_each_criterion_is_stated_in_one_line():
    assert gate.describe_criterion("min_false_lesion", 0.02).endswith("drop against no gate is <= 0.02")
    assert gate.describe_criterion("mean_dice").startswith("mean_dice: the highest mean per-image Dice")
    with pytest.raises(ValueError, match=r"one of \('min_false_lesion', 'mean_dice'\)"):
        gate.describe_criterion("fp")


def test_score_gate_by_hand_and_without_normal_or_lesion_images():
    dice, empty, area = (
        np.array([1, 0, 1, 2 / 3]),
        np.array([True, True, False, False]),
        np.array([0, 1, 2, 2]),
    )
    lesion_free = np.array([False, True, False, True])  # the false lesion of image 1 gated, lesion 3 lost

    scores = gate.score_gate(dice, empty, area, lesion_free)

    assert scores == pytest.approx(
        {"dice": 3 / 4, "gated_fraction": 1 / 2, "normal_false_lesion": 0.0, "lesion_dice_drop": 1 / 3}
    )
    lesions_only = gate.score_gate(dice[2:], empty[2:], area[2:], lesion_free[2:])
    assert lesions_only["normal_false_lesion"] == 0.0 and lesions_only["lesion_dice_drop"] == pytest.approx(
        1 / 3
    )
    normals_only = gate.score_gate(dice[:2], empty[:2], area[:2], np.zeros(2, bool))
    assert normals_only["normal_false_lesion"] == 1 / 2 and normals_only["lesion_dice_drop"] == 0.0


def test_choose_candidate_returns_the_label_of_the_chosen_row():
    curve = pd.DataFrame(
        {
            "rule": ["none", "mild", "strong"],
            "dice": [0.70, 0.72, 0.74],
            "gated_fraction": [0.0, 0.1, 0.3],
            "normal_false_lesion": [0.5, 0.3, 0.1],
            "lesion_dice_drop": [0.0, 0.015, 0.03],
        },
        index=[10, 11, 12],
    )
    assert gate.choose_candidate(curve, ["rule"]) == 11  # 0.03 is over the 0.02 allowed
    assert gate.choose_candidate(curve, ["rule"], max_drop=0.03) == 12
    assert gate.choose_candidate(curve, ["rule"], criterion="mean_dice") == 12
    with pytest.raises(ValueError, match=r"missing columns \['lesion_dice_drop'\]"):
        gate.choose_candidate(curve.drop(columns="lesion_dice_drop"), ["rule"])
