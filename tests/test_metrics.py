from __future__ import annotations

import pytest
import torch

from zoo.tasks.single_label import confusion_matrix, scores


def test_confusion_matrix_counts_true_rows_and_predicted_columns() -> None:
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_scores_match_hand_computed_macro_averages() -> None:
    result = scores(torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 2]]), ["a", "b", "c"])
    precision = [1.0, 0.5, 2 / 3]
    recall = [0.5, 0.5, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(sum(precision) / 3)
    assert result["recall"] == pytest.approx(sum(recall) / 3)
    assert result["f1"] == pytest.approx(sum(f1) / 3)
    assert [row["support"] for row in result["per_class"]] == [2, 2, 2]
    assert result["per_class"][1]["label"] == "b"


def test_a_class_never_predicted_scores_zero_not_nan() -> None:
    result = scores(torch.tensor([[2, 0], [1, 0]]), ["x", "y"])
    assert result["per_class"][1] == {"label": "y", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["precision"] == pytest.approx((2 / 3) / 2)
