"""The Preprocessing record: built from timm's data-config keys, checked, and written back the same."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zoo.data.preprocessing import Preprocessing
from zoo.errors import ZooError

GOOD = {
    "input_size": [3, 224, 224],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_config_round_trip() -> None:
    preprocessing = Preprocessing.from_config(GOOD, "config.json")
    assert preprocessing.channels == 3 and preprocessing.input_size == (3, 224, 224)
    assert preprocessing.to_config() == GOOD
    assert Preprocessing.from_config(preprocessing.to_config(), "again") == preprocessing


def test_tensor_datasets_default_to_a_whole_image_resize() -> None:
    preprocessing = Preprocessing.from_config({"input_size": [1, 28, 28], "mean": [0.1307], "std": [0.3081]}, "x")
    assert (preprocessing.interpolation, preprocessing.crop_pct, preprocessing.crop_mode) == ("bilinear", 1.0, "center")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"input_size": [3, 224]}, "input_size"),
        ({"input_size": [3, 0, 224]}, "input_size"),
        ({"input_size": [3, 10**9, 224]}, "input_size"),
        ({"mean": [0.5]}, "mean and std need 3"),
        ({"std": [0.2, 0.0, 0.2]}, "std finite and positive"),
        ({"mean": [math.nan, 0.1, 0.1]}, "mean must be finite"),
        ({"crop_pct": 2.0}, "crop_pct"),
        ({"interpolation": "lanczos9"}, "interpolation"),
        ({"mean": "grey"}, "expected a number"),
        ({"input_size": None}, "not usable"),
    ],
)
def test_damaged_preprocessing_is_one_line_naming_the_file(change: dict, fragment: str) -> None:
    with pytest.raises(ZooError, match=f"config.json: .*{fragment}"):
        Preprocessing.from_config({**GOOD, **change}, "config.json")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


@given(key=st.sampled_from(sorted(GOOD)), value=json_values, drop=st.booleans())
def test_any_mutation_gives_a_record_or_a_zoo_error(key: str, value: object, drop: bool) -> None:
    config = {k: v for k, v in GOOD.items() if not (drop and k == key)} | ({} if drop else {key: value})
    try:
        preprocessing = Preprocessing.from_config(config, "config.json")
    except ZooError as exc:
        assert "\n" not in str(exc)
        return
    assert Preprocessing.from_config(preprocessing.to_config(), "again") == preprocessing
