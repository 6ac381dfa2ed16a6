from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import RECIPES, REPO, assert_user_error
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.config.schema import json_schema
from zoo.config.sources import RecipeOutput, Scratch
from zoo.errors import ZooError
from zoo.plugins import _registry as registry

SHIPPED = sorted(RECIPES.glob("*.toml")) + [REPO / "plugins" / "zoo-shapes" / "shapes.toml"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MINIMAL = 'name = "tiny"\n[model]\nbackbone = "mnist_cnn"\n[data]\ndataset = "mnist"\n'


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_pass_the_schema_and_the_json_schema(path: Path) -> None:
    recipe = recipes.load(path)
    assert recipe.name == path.stem
    header = path.read_text().splitlines()[0]
    assert header.startswith(f"# {path.stem}:"), "every recipe's header says what it does"
    assert "zoo run" in path.read_text(), "every recipe's header says how to run it"
    with path.open("rb") as file:
        raw = tomllib.load(file)
    # A recipe that extends another is complete only once merged.
    jsonschema.validate(recipe.to_dict() if "extends" in raw else raw, json_schema())


def test_schema_command_prints_json_schema() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "model", "data"}
    assert "train" in schema["properties"]


def test_extends_merges_deeply_and_paths_follow_their_file(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    write(
        tmp_path / "base" / "base.toml",
        MINIMAL
        + 'root = "data"\nclasses = [1, 2]\n[train]\nepochs = 7\nseed = 3\n[model.freeze]\nfreeze = "backbone"\n',
    )
    child = write(
        tmp_path / "child.toml",
        'extends = "base/base.toml"\nname = "child"\n[train]\nepochs = 2\n[model]\npretrained = "recipe:other.toml"\n',
    )
    recipe = recipes.load(child, check=False)
    assert recipe.name == "child"
    assert (recipe.train.epochs, recipe.train.seed) == (2, 3)
    assert recipe.model.freeze.freeze == ["backbone"]
    assert recipe.data.classes == [1, 2]
    assert recipe.data.root == str(tmp_path / "base" / "data")
    assert recipe.model.pretrained == RecipeOutput(tmp_path / "other.toml")
    assert recipe.to_dict()["model"]["pretrained"] == f"recipe:{tmp_path / 'other.toml'}"
    assert "extends" not in recipe.to_dict()


def test_a_dataset_path_that_names_a_folder_beside_the_recipe_is_that_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "recipes" / "saved_colours").mkdir(parents=True)
    (tmp_path / "elsewhere" / "here_only").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    recipe = tmp_path / "recipes" / "hf.toml"
    for written, expected in [
        ("saved_colours", str(tmp_path / "recipes" / "saved_colours")),  # beside the recipe, wherever zoo runs
        ("zoo-test/colours", "zoo-test/colours"),  # a Hub dataset id
        ("here_only", "here_only"),  # no folder beside the recipe: the plugin looks from the current folder
    ]:
        recipe.write_text(MINIMAL.replace('"mnist"', '"hf"') + f"[data.args]\npath = {written!r}\n")
        assert recipes.load(recipe, check=False).data.args["path"] == expected
    overridden = recipes.load(recipe, ["data.args.path=here_only"], check=False)  # overrides: the current folder
    assert overridden.data.args["path"] == str(tmp_path / "elsewhere" / "here_only")


def test_recipes_linked_into_a_cache_find_each_other_beside_their_links(tmp_path: Path) -> None:
    """As a pulled Hub repo lies in the Hugging Face cache: snapshots/COMMIT/FILE, each a link to blobs/HASH."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "c0ffee"
    blobs.mkdir()
    (snapshot / "recipes").mkdir(parents=True)
    files = {
        "recipes/child.toml": 'extends = "base.toml"\nname = "child"\n[model]\npretrained = "recipe:../pre.toml"\n',
        "recipes/base.toml": MINIMAL + 'root = "data"\n[train]\nepochs = 7\n',
        "pre.toml": 'extends = "recipes/base.toml"\nname = "pre"\n',
    }
    for number, (name, text) in enumerate(files.items()):
        write(blobs / f"blob{number}", text)
        (snapshot / name).symlink_to(Path(os.path.relpath(blobs / f"blob{number}", (snapshot / name).parent)))
    child = recipes.load(snapshot / "recipes" / "child.toml", check=False)
    assert (child.name, child.train.epochs, child.data.root) == ("child", 7, str(snapshot / "recipes" / "data"))
    assert child.model.pretrained == RecipeOutput(snapshot / "pre.toml")
    pre = recipes.load(child.model.pretrained.path, check=False)
    assert (pre.name, pre.train.epochs) == ("pre", 7)


def test_a_recipe_path_through_a_linked_folder_and_dotdot_reads_what_the_system_reads(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "w" / "ln").symlink_to(tmp_path / "x" / "y")  # w/ln/.. is x, not w
    write(tmp_path / "x" / "base.toml", MINIMAL.replace('"tiny"', '"through-the-link"'))
    write(tmp_path / "w" / "base.toml", MINIMAL.replace('"tiny"', '"beside-the-link"'))
    write(tmp_path / "w" / "child.toml", 'extends = "ln/../base.toml"\n')
    assert recipes.load(tmp_path / "w" / "child.toml", check=False).name == "through-the-link"


def test_overrides_are_typed_by_toml_and_the_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", MINIMAL)
    recipe = recipes.load(
        path,
        [
            "train.epochs=1",
            "optim.lr=3e-4",
            "data.classes=[1,2]",
            "optim.name=sgd",
            "model.pretrained=false",
            "model.head.type=mlp",
            "model.head.hidden=[8, 4]",
            "data.root=here",
        ],
        check=False,
    )
    assert recipe.train.epochs == 1
    assert recipe.optim.lr == 3e-4 and recipe.optim.name == "sgd"
    assert recipe.data.classes == [1, 2]
    assert recipe.model.pretrained == Scratch()
    assert recipe.model.head.hidden == [8, 4]
    assert recipe.data.root == str(tmp_path / "here")  # override paths are relative to the cwd


def test_a_table_override_replaces_the_table_and_a_dotted_one_changes_an_entry() -> None:
    """Switching the loss from the command line: its old arguments go with a table override."""
    shipped = recipes.load(RECIPES / "mnist.toml", check=False)
    assert shipped.loss.args == {"label_smoothing": 0.1}
    assert recipes.load(RECIPES / "mnist.toml", ["loss.name=focal", "loss.args={}"]).loss.args == {}
    replaced = recipes.load(RECIPES / "mnist.toml", ["loss.name=focal", "loss.args={gamma=1.0}"])
    assert replaced.loss.args == {"gamma": 1.0}
    then_dotted = recipes.load(RECIPES / "mnist.toml", ["loss.args={}", "loss.args.label_smoothing=0.2"], check=False)
    assert then_dotted.loss.args == {"label_smoothing": 0.2}
    assert recipes.load(RECIPES / "mnist.toml", ["loss.args.label_smoothing=0.3"]).loss.args == {"label_smoothing": 0.3}
    assert recipes.load(RECIPES / "mnist.toml", ["train.early_stop={patience=2}"]).train.early_stop.patience == 2


def test_resolved_recipe_round_trips_and_hash_ignores_the_output_folder(tmp_path: Path) -> None:
    recipe = recipes.load(RECIPES / "mnist_finetune.toml")
    again = recipes.load(write(tmp_path / "resolved.toml", recipe.to_toml()))
    assert again == recipe
    assert recipes.load(RECIPES / "mnist_finetune.toml", ["output.dir=/elsewhere"]).hash == recipe.hash
    assert recipes.load(RECIPES / "mnist_finetune.toml", ["train.seed=1"]).hash != recipe.hash


@pytest.mark.parametrize(
    "unhashed",
    ["train.tensorboard=true", "train.log_every=7", 'description="a note"', 'license="mit"', 'log.to=["tensorboard"]'],
)
def test_hash_ignores_what_only_the_log_or_the_card_shows(unhashed: str) -> None:
    # A `recipe:` source is not retrained for a setting that leaves the weights as they were.
    recipe = recipes.load(RECIPES / "mnist.toml")
    assert recipes.load(RECIPES / "mnist.toml", [unhashed]).hash == recipe.hash
    assert recipes.load(RECIPES / "mnist.toml", [unhashed, "train.epochs=9"]).hash != recipe.hash


@pytest.mark.parametrize("override", ["extends=/nonexistent/base.toml", "extends.x=1"])
def test_extends_as_an_override_is_refused(tmp_path: Path, override: str) -> None:
    # The bases are merged before the overrides: an extends given here would be dropped without a word.
    result = CliRunner().invoke(cli, ["show", str(RECIPES / "mnist.toml"), override])
    assert_user_error(result, "extends can only be set in the recipe file", override)


def test_show_prints_the_resolved_recipe() -> None:
    result = CliRunner().invoke(cli, ["show", str(RECIPES / "mnist_finetune.toml"), "train.epochs=3"])
    assert result.exit_code == 0, result.stderr
    resolved = tomllib.loads(result.stdout)
    assert resolved["train"]["epochs"] == 3
    assert resolved["model"]["pretrained"] == f"recipe:{RECIPES / 'mnist_pretrain.toml'}"
    assert resolved["optim"]["lr"] == 3e-3


def test_show_hides_a_trackers_password() -> None:
    uri = "log.mlflow.tracking_uri=http://alice:s3cret@127.0.0.1:9"
    result = CliRunner().invoke(cli, ["show", str(RECIPES / "mnist.toml"), uri, 'log.to=["mlflow"]'])
    assert result.exit_code == 0, result.stderr
    assert "s3cret" not in result.stdout and "alice" not in result.stdout
    assert tomllib.loads(result.stdout)["log"]["mlflow"]["tracking_uri"] == "http://***@127.0.0.1:9"


BAD_RECIPES = {
    "malformed TOML": ("name = \n", [], "not valid TOML"),
    "unknown top-level key": (MINIMAL + "[trian]\nepochs = 1\n", [], "unknown key 'trian' (did you mean 'train'?)"),
    "misspelt nested key": (
        MINIMAL + "[train]\nepoch = 1\n",
        [],
        "unknown key 'train.epoch' (did you mean 'train.epochs'?)",
    ),
    "wrong type": (MINIMAL + '[train]\nepochs = "ten"\n', [], "train.epochs: Input should be a valid integer"),
    "out of range": (MINIMAL + "[train]\nepochs = 0\n", [], "train.epochs: Input should be greater than or equal to 1"),
    "bad choice": (
        MINIMAL + '[optim]\nname = "adagrad"\n',
        [],
        "optim.name: Input should be 'sgd', 'adam', 'adamw' or 'adadelta'",
    ),
    "missing key": ('name = "x"\n[model]\nbackbone = "mnist_cnn"\n', [], "missing required key 'data'"),
    "key for another optimiser": (
        MINIMAL + '[optim]\nname = "adam"\nmomentum = 0.9\n',
        [],
        "optim.momentum does not apply to adam",
    ),
    "warm-up for a schedule without one": (
        MINIMAL + '[schedule]\nname = "onecycle"\nwarmup_epochs = 1.0\n',
        [],
        "schedule.warmup_epochs does not apply to onecycle (it takes: pct_start, div_factor, final_div_factor)",
    ),
    "decay for no schedule": (MINIMAL, ["schedule.gamma=0.5"], "schedule.gamma does not apply to none"),
    "compile mode without compile": (
        MINIMAL + '[train]\ncompile_mode = "max-autotune"\n',
        [],
        "train.compile_mode does not apply without train.compile = true",
    ),
    "channels-last under FSDP": (
        MINIMAL,
        ["train.strategy=fsdp", "train.channels_last=true"],
        'train.channels_last = true does not apply with train.strategy = "fsdp"',
    ),
    "a memory format that is not one": (
        MINIMAL,
        ["train.channels_last=yes"],
        "train.channels_last: Input should be a valid boolean or 'auto' (got 'yes'); expected true, false or \"auto\"",
    ),
    "a number of the right kind out of range, where a list would do too": (
        MINIMAL,
        ["data.per_class=0"],
        "data.per_class: Input should be greater than or equal to 1 (got 0)",
    ),
    "class weights that are neither": (
        MINIMAL,
        ["loss.class_weights=balancd"],
        "loss.class_weights: Input should be 'balanced' or a valid list (got 'balancd')",
    ),
    "mix_prob without mixing": (
        MINIMAL + "mix_prob = 0.5\n",
        [],
        "data.mix_prob does not apply without data.mixup or data.cutmix",
    ),
    "mix_switch_prob with mixup alone": (
        MINIMAL + "mixup = 0.2\nmix_switch_prob = 0.2\n",
        [],
        "data.mix_switch_prob does not apply without both data.mixup and data.cutmix",
    ),
    "a negative weight in a list of class weights": (
        MINIMAL,
        ["loss.class_weights=[1.0,-1.0]"],
        "override loss.class_weights: loss.class_weights[1]: Input should be greater than 0 (got -1.0)",
    ),
    "mlp widths for a linear head": (
        MINIMAL,
        ["model.head.hidden=[8]"],
        'model.head.hidden does not apply to a linear head: set model.head.type = "mlp"',
    ),
    "mlp activation for a linear head": (
        MINIMAL,
        ["model.head.activation=gelu"],
        "model.head.activation does not apply to a linear head",
    ),
    "unknown backbone": (MINIMAL.replace("mnist_cnn", "resnet9000"), [], "model.backbone: unknown model 'resnet9000'"),
    "unknown loss": (MINIMAL + '[loss]\nname = "crossentropy"\n', [], "did you mean 'cross_entropy'"),
    "bad plugin arg": (
        MINIMAL + "[model.args]\nconvv1 = 8\n",
        [],
        "model.args.convv1: not an argument of this plugin (did you mean 'conv1'",
    ),
    "bad plugin arg type": (MINIMAL + '[model.args]\nconv1 = "wide"\n', [], "model.args.conv1: expected int"),
    "pretrained=true without weights": (MINIMAL + "[model]\n", ["model.pretrained=true"], "has no weights of its own"),
    "bad override syntax": (MINIMAL, ["train.epochs"], "write KEY=VALUE"),
    "bad override value": (
        MINIMAL,
        ["train.epochs=ten"],
        "override train.epochs: train.epochs: Input should be a valid integer",
    ),
    "unknown override key": (MINIMAL, ["train.epohcs=1"], "did you mean 'train.epochs'"),
    "wrong pretrained type": (MINIMAL, ["model.pretrained=3"], "model.pretrained"),
}


@pytest.mark.parametrize("case", BAD_RECIPES, ids=list(BAD_RECIPES))
def test_bad_recipe_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    text, overrides, expected = BAD_RECIPES[case]
    if case == "pretrained=true without weights":
        text = MINIMAL
    path = write(tmp_path / "bad.toml", text)
    result = CliRunner().invoke(cli, ["show", str(path), *overrides])
    line = assert_user_error(result, expected)
    assert str(path) in line or line.startswith("zoo: error: override")


def test_missing_recipe_and_extends_cycle(tmp_path: Path) -> None:
    assert_user_error(CliRunner().invoke(cli, ["show", "nope.toml"]), "recipe not found", "nope.toml")
    write(tmp_path / "a.toml", 'extends = "b.toml"\n' + MINIMAL)
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    assert_user_error(CliRunner().invoke(cli, ["show", "a.toml"]), "extends cycle: a.toml -> b.toml -> a.toml")


def test_a_base_recipes_schedule_keys_must_fit_the_childs_schedule(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", MINIMAL + '[schedule]\nname = "cosine"\nwarmup_epochs = 2.0\n')
    write(tmp_path / "child.toml", 'extends = "base.toml"\n[schedule]\nname = "step"\n')
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "child.toml")])
    assert_user_error(result, "schedule.warmup_epochs does not apply to step (it takes: step_size, gamma)")
    # A run folder's recipe.toml writes every default: those are no key the recipe chose.
    saved = recipes.load(tmp_path / "base.toml", ["schedule.name=onecycle", "schedule.warmup_epochs=0"]).to_toml()
    assert tomllib.loads(saved)["schedule"]["warmup_epochs"] == 0.0
    assert recipes.from_dict(tomllib.loads(saved)).schedule.name == "onecycle"


def test_merge_replaces_lists_and_keeps_inputs_unchanged() -> None:
    base = {"a": {"b": [1, 2], "c": 1}}
    merged = recipes.merge(base, {"a": {"b": [3]}})
    assert merged == {"a": {"b": [3], "c": 1}}
    assert base == {"a": {"b": [1, 2], "c": 1}}


def test_check_args_accepts_ints_for_floats_and_rejects_bools_for_ints() -> None:
    def factory(rate: float = 0.5, count: int = 2) -> None: ...

    registry.check_args(factory, {"rate": 1, "count": 3}, "model.args")
    with pytest.raises(ZooError, match="model.args.count: expected int"):
        registry.check_args(factory, {"count": True}, "model.args")


def test_extends_never_reads_a_device_or_a_huge_file(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# " + b"x" * (2 << 20))
    for base, fragment in (("/dev/zero", "is not a regular file"), (str(huge), r"not a recipe \(at most")):
        recipe = tmp_path / "r.toml"
        recipe.write_text(f'extends = "{base}"\nname = "r"\n')
        with pytest.raises(ZooError, match=fragment):
            recipes.load(recipe, check=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["output.dir", "data.root", "model.pretrained", "extends", "data.args.root"]),
    prefix=st.sampled_from(["", "recipe:", "registry:", "hf-hub:", "/"]),
    around=st.tuples(*[st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)] * 2),
    in_file=st.booleans(),
)
def test_a_nul_byte_in_any_path_is_one_line_naming_the_key(
    tmp_path: Path, key: str, prefix: str, around: tuple[str, str], in_file: bool
) -> None:
    """TOML allows "\\u0000"; no path can hold it, and pathlib raises: the recipe names the key instead."""
    assume(in_file or key != "extends")  # extends as an override is refused whatever it holds
    value = json.dumps(prefix + around[0] + "\0" + around[1], ensure_ascii=False)  # JSON's escapes are TOML's
    recipe = write(tmp_path / "nul.toml", 'name = "tiny"\nmodel.backbone = "mnist_cnn"\ndata.dataset = "mnist"\n')
    if in_file:
        recipe.write_text(recipe.read_text() + f"{key} = {value}\n")
    origin = f"{recipe}: " if in_file else "override "
    with pytest.raises(ZooError, match=re.escape(f"{origin}{key}: ") + ".* holds a NUL byte"):
        recipes.load(recipe, [] if in_file else [f"{key}={value}"], check=False)


def test_a_nul_byte_in_a_run_folders_recipe_is_one_line(tmp_path: Path) -> None:
    stored = recipes.load(write(tmp_path / "ok.toml", MINIMAL), check=False).to_dict()
    stored["output"] = {"dir": "runs/a\0b"}
    with pytest.raises(ZooError, match=r"recipe.toml: output.dir: .* holds a NUL byte"):
        recipes.from_dict(stored, "run/recipe.toml")  # a run folder's recipe.toml, damaged
