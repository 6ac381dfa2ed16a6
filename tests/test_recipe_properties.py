"""Property-based tests (hypothesis) for recipe parsing, merging and overrides."""

from __future__ import annotations

import tomllib
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.config import recipe as recipes
from zoo.errors import ZooError

keys = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
scalars = st.one_of(
    st.integers(-1000, 1000), st.booleans(), st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False)
)
tables = st.recursive(
    st.dictionaries(keys, scalars, max_size=4),
    lambda inner: st.dictionaries(keys, inner | scalars, max_size=4),
    max_leaves=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(tables)
def test_merge_with_nothing_or_itself_changes_nothing(table: dict[str, Any]) -> None:
    assert recipes.merge(table, {}) == table
    assert recipes.merge({}, table) == table
    assert recipes.merge(table, table) == table


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(tables, tables)
def test_merge_keeps_every_key_and_the_update_wins_on_leaves(base: dict[str, Any], update: dict[str, Any]) -> None:
    merged = recipes.merge(base, update)
    assert merged.keys() == base.keys() | update.keys()
    for key, value in update.items():
        if not (isinstance(value, dict) and isinstance(base.get(key), dict)):
            assert merged[key] == value


valid_settings = st.fixed_dictionaries(
    {
        "train.epochs": st.integers(1, 10_000),
        "train.seed": st.integers(0, 2**31),
        "optim.lr": st.floats(1e-8, 10.0),
        "optim.name": st.sampled_from(["sgd", "adam", "adamw", "adadelta"]),
        "data.batch_size": st.integers(1, 4096),
        "data.val_split": st.floats(0.0, 0.99),
        "data.classes": st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True),
        "schedule.name": st.sampled_from(["none", "step", "cosine", "onecycle", "warmup"]),
        "model.head.dropout": st.floats(0.0, 0.99),
        "train.compile": st.booleans(),
    }
)

BASE = 'name = "p"\n[model]\nbackbone = "mnist_cnn"\n[data]\ndataset = "mnist"\n'


def override_text(value: Any) -> str:
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


@settings(max_examples=60, deadline=None)
@given(valid_settings)
def test_overrides_land_typed_and_survive_a_toml_round_trip(tmp_path_factory: Any, values: dict[str, Any]) -> None:
    folder = tmp_path_factory.mktemp("recipe")
    path = folder / "r.toml"
    path.write_text(BASE)
    recipe = recipes.load(path, [f"{key}={override_text(value)}" for key, value in values.items()], check=False)
    for key, value in values.items():
        section, _, field = key.rpartition(".")
        node: Any = recipe
        for part in section.split("."):
            node = getattr(node, part)
        assert getattr(node, field) == value
    (folder / "resolved.toml").write_text(recipe.to_toml())
    assert recipes.load(folder / "resolved.toml", check=False) == recipe
    assert tomllib.loads(recipe.to_toml())["train"]["epochs"] == values["train.epochs"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_override_text_is_accepted_or_a_one_line_user_error(tmp_path_factory: Any, text: str) -> None:
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "r.toml").write_text(BASE)
    try:
        recipes.load(folder / "r.toml", [text], check=False)
    except ZooError as error:
        assert "\n" not in str(error)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["train.epochs", "data.batch_size", "data.per_class", "train.grad_accum"]), st.integers(-100, 0))
def test_out_of_range_integers_are_refused_naming_the_key(tmp_path_factory: Any, key: str, value: int) -> None:
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "r.toml").write_text(BASE)
    try:
        recipes.load(folder / "r.toml", [f"{key}={value}"], check=False)
    except ZooError as error:
        assert key in str(error) and "greater than or equal to 1" in str(error)
    else:
        raise AssertionError(f"{key}={value} was accepted")
