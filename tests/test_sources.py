"""model.pretrained parsed once into a typed source, and written back unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zoo.config import recipe as recipes
from zoo.config import sources
from zoo.config.sources import HubRepo, LocalFolder, PluginWeights, RecipeOutput, RegistryName, Scratch
from zoo.errors import ZooError

BASE = Path("/recipes/here")
repo_part = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}", fullmatch=True)


def test_each_spelling_parses_to_its_type() -> None:
    assert sources.parse(False, BASE) == Scratch()
    assert sources.parse(True, BASE) == PluginWeights()
    assert sources.parse("runs/a", BASE) == LocalFolder(BASE / "runs/a")
    assert sources.parse("/abs/run", BASE) == LocalFolder(Path("/abs/run"))
    assert sources.parse("recipe:../pre.toml", BASE) == RecipeOutput(Path("/recipes/pre.toml"))
    assert sources.parse("hf-hub:org/name", BASE) == HubRepo("org/name")
    assert sources.parse("hf-hub:org/name@v1.0", BASE) == HubRepo("org/name", "v1.0")
    assert sources.parse("registry:mnist_cnn.digits04", BASE) == RegistryName("mnist_cnn.digits04")
    assert sources.parse("./registry:x", BASE) == LocalFolder(BASE / "registry:x")  # a folder so named


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "hf-hub:",
        "hf-hub:noslash",
        "hf-hub:a/b@",
        "hf-hub:../x",
        "hf-hub:a/b/c",
        "registry:",
        "registry:a/b",
        "registry:../x",
        "registry:.hidden",
        "registry:two words",
    ],
)
def test_malformed_sources_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        sources.parse(text, BASE)


@given(org=repo_part, name=repo_part, revision=st.one_of(st.none(), repo_part))
def test_hub_sources_round_trip_through_text(org: str, name: str, revision: str | None) -> None:
    source = HubRepo(f"{org}/{name}", revision)
    assert sources.parse(sources.text(source), BASE) == source


@given(st.from_regex(sources.REGISTRY_NAME, fullmatch=True))
def test_registry_names_round_trip_through_text(name: str) -> None:
    assert sources.parse(sources.text(RegistryName(name)), BASE) == RegistryName(name)


@given(st.text(max_size=40))
def test_any_string_is_one_source_or_a_value_error(text: str) -> None:
    try:
        parsed = sources.parse(text, BASE)
    except ValueError:
        return
    assert isinstance(parsed, LocalFolder | RecipeOutput | HubRepo | RegistryName)
    assert sources.parse(sources.text(parsed), Path("/elsewhere")) == parsed  # written back absolute


def test_recipes_anchor_sources_to_their_file_and_report_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.toml"
    recipe.write_text(
        'name = "r"\n[model]\nbackbone = "mnist_cnn"\npretrained = "recipe:base.toml"\n[data]\ndataset = "mnist"\n'
    )
    assert recipes.load(recipe, check=False).model.pretrained == RecipeOutput(tmp_path / "sub" / "base.toml")
    overridden = recipes.load(recipe, ["model.pretrained=runs/x"], check=False)
    assert overridden.model.pretrained == LocalFolder(Path.cwd() / "runs/x")  # overrides: relative to the cwd
    with pytest.raises(ZooError, match=r"override model.pretrained: .*'a/b/c' is not a Hub repo"):
        recipes.load(recipe, ["model.pretrained='hf-hub:a/b/c'"], check=False)


def test_the_resolver_trains_a_recipe_source_only_through_its_caller(tmp_path: Path) -> None:
    from zoo.sharing.resolve import resolve

    trained: list[Path] = []

    def train(path: Path) -> Path | None:
        trained.append(path)
        return tmp_path / "run"

    recipe = RecipeOutput(tmp_path / "pre.toml")
    assert resolve(recipe, train_recipe=train) == LocalFolder(tmp_path / "run")
    assert trained == [tmp_path / "pre.toml"]
    assert resolve(recipe, train_recipe=lambda path: None) == Scratch()  # a dry run: not trained
    with pytest.raises(ZooError, match=r"^recipe:.*pre\.toml names weights that a recipe trains, and only `zoo run`"):
        resolve(recipe)
    for local in (Scratch(), PluginWeights(), LocalFolder(tmp_path)):
        assert resolve(local) == local


def test_a_registry_name_with_only_a_recipe_resolves_to_what_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from zoo.sharing.resolve import resolve

    (tmp_path / "digits.toml").write_text("")
    entry = {"backbone": "mnist_cnn", "num_classes": 1, "label_names": ["0"], "sources": {"recipe": "digits.toml"}}
    (tmp_path / "registry.json").write_text(json.dumps({"schema": 2, "weights": {"digits": entry}}))
    monkeypatch.setenv("ZOO_REGISTRY", str(tmp_path / "registry.json"))
    trained = resolve(RegistryName("digits"), train_recipe=lambda path: path.parent / f"{path.stem}-run")
    assert trained == LocalFolder(tmp_path / "digits-run")
    with pytest.raises(ZooError, match="'digits' has no Hub source, only a recipe"):  # where none can train
        resolve(RegistryName("digits"))


def test_a_run_argument_is_a_folder_as_given_and_never_a_recipe(tmp_path: Path) -> None:
    from zoo.sharing.resolve import local_run_folder

    assert local_run_folder("runs/a") == Path("runs/a")  # as given: errors name it the user's way
    assert local_run_folder(Path("recipe:x.toml")) == Path("recipe:x.toml")  # a Path is a folder, whatever its name
    with pytest.raises(ZooError, match="names weights that a recipe trains"):
        local_run_folder("recipe:x.toml")
    with pytest.raises(ZooError, match="^hf-hub:noslash: 'noslash' is not a Hub repo"):
        local_run_folder("hf-hub:noslash")


def test_the_model_builder_takes_resolved_sources_only() -> None:
    from zoo.config.schema import ModelConfig
    from zoo.models.build import build_model

    for source in ("hf-hub:org/name", "registry:digits", "recipe:/x.toml"):
        with pytest.raises(TypeError, match="must be resolved to local files"):
            build_model(ModelConfig(backbone="mnist_cnn", pretrained=source), ["a", "b"])
