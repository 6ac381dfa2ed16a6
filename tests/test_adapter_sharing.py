"""Adapters shared alone: the run pins its base, `zoo push --adapter-only` leaves the merged weights out, and
every reader of such a run fetches the pinned base, checks it and merges the adapter back in."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, TOKEN, assert_user_error, write_finished_run, zoo_command
from hub_server import FakeHub
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from safetensors.torch import load_file

from zoo.config import recipe as recipes
from zoo.errors import ZooError
from zoo.models import adapters
from zoo.runs.folder import FilePin, RunFolder
from zoo.sharing import adapted, hub, registry
from zoo.training.runner import run

# Small runs of zoo's BN-free CNN: a base on two digits, an adapter on two others.
CNN = ["data.classes=[0,1]", "data.per_class=40", "data.batch_size=16", "train.precision=fp32", "train.epochs=1"]
CNN_LORA = ["data.classes=[2,3]", 'model.adapter={target = "conv", r = 2}']
# timm's tiny ViT at 32 px on three digits (as tests/test_adapters.py), LoRA on the attention's qkv.
VIT = ["model.backbone=timm/test_vit", "data.image_size=32", "data.classes=[0,1,2]", "data.per_class=30",
       "data.batch_size=16", "train.precision=fp32", "data.val_split=0.2", "train.epochs=2"]  # fmt: skip
VIT_LORA = ['model.adapter={target = "qkv", r = 4, alpha = 8}', "optim.lr=0.01"]
# timm's resnet10t, which has BatchNorm, LoRA on its convolutions.
RESNET = ["model.backbone=timm/resnet10t", "data.classes=[0,1]", "data.per_class=40", "data.batch_size=16",
          "train.precision=fp32", "train.epochs=1"]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def adapter_only_copy(run_folder: Path, folder: Path) -> Path:
    """What an adapter-only pull holds: the shared files, without model.safetensors."""
    folder.mkdir()
    for name in RunFolder.SHARED:
        if (run_folder / name).is_file() and name != RunFolder.WEIGHTS:
            shutil.copy(run_folder / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def cnn_runs(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cnn")
    base = run(recipes.load(RECIPES / "mnist.toml", [*CNN, f"output.dir={root / 'base'}"]), progress=False)
    lora = run(recipes.load(RECIPES / "mnist.toml", [*CNN, *CNN_LORA, f"model.pretrained={base.folder}",
                                                      f"output.dir={root / 'lora'}"]), progress=False)  # fmt: skip
    return Path(base.folder), Path(lora.folder)


def test_an_adapter_run_pins_every_file_of_its_base(cnn_runs: tuple[Path, Path]) -> None:
    base, lora = cnn_runs
    pin = adapters.base_pin_of(RunFolder(lora))
    assert pin is not None and pin.source == base.name  # the folder's name: config.json holds no path of this machine
    assert str(base.parent) not in (lora / RunFolder.CONFIG).read_text()
    assert pin.files == {name: FilePin(sha256=sha256(base / name), size=(base / name).stat().st_size)
                         for name in (RunFolder.WEIGHTS, RunFolder.CONFIG)}  # fmt: skip
    assert adapters.base_pin_of(RunFolder(base)) is None  # a full run pins nothing


def test_an_adapter_alone_merged_onto_its_pinned_base_gives_the_run_s_weights(
    cnn_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, lora = cnn_runs
    only = adapter_only_copy(lora, tmp_path / "only")
    fetched = []
    whole = adapted.made_whole(only, "test", lambda source: fetched.append(source) or base)
    assert fetched == [base.name]
    merged, kept = load_file(whole / RunFolder.WEIGHTS), load_file(lora / RunFolder.WEIGHTS)
    assert merged.keys() == kept.keys() and all(merged[name].equal(kept[name]) for name in kept)
    assert (whole / RunFolder.CONFIG).read_bytes() == (lora / RunFolder.CONFIG).read_bytes()
    assert adapted.made_whole(only, "test", lambda source: pytest.fail("fetched again")) == whole  # cached


@pytest.mark.parametrize("hostile", ["other bytes", "symlink", "folder", "missing"])
def test_a_base_whose_files_differ_from_the_pin_is_refused(
    cnn_runs: tuple[Path, Path], tmp_path: Path, hostile: str
) -> None:
    base, lora = cnn_runs
    only = adapter_only_copy(lora, tmp_path / "only")
    other = shutil.copytree(base, tmp_path / "other-base")
    weights = other / RunFolder.WEIGHTS
    if hostile == "other bytes":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    elif hostile == "symlink":
        weights.unlink()
        weights.symlink_to(lora / RunFolder.WEIGHTS)
    elif hostile == "folder":
        weights.unlink()
        weights.mkdir()
    else:
        weights.unlink()
    with pytest.raises(ZooError) as raised:
        adapted.made_whole(only, "hf-hub:org/lora", lambda source: other)
    message = str(raised.value)
    assert "\n" not in message and str(weights) in message and "refusing to apply the adapter" in message
    assert sha256(base / RunFolder.WEIGHTS) in message
    assert not list(Path("cache").glob("adapted/*/model.safetensors"))  # nothing merged, nothing written


def test_a_damaged_base_pin_is_one_line(cnn_runs: tuple[Path, Path], tmp_path: Path) -> None:
    _, lora = cnn_runs
    only = adapter_only_copy(lora, tmp_path / "only")
    config = json.loads((only / RunFolder.CONFIG).read_text())
    config["zoo"][adapters.BASE_KEY]["files"].pop(RunFolder.WEIGHTS)
    (only / RunFolder.CONFIG).write_text(json.dumps(config))
    with pytest.raises(ZooError, match=rf"zoo\.adapter_base.*must pin {RunFolder.WEIGHTS}"):
        adapted.made_whole(only, "test", lambda source: pytest.fail("fetched a base it cannot check"))
    del config["zoo"][adapters.BASE_KEY]
    (only / RunFolder.CONFIG).write_text(json.dumps(config))
    with pytest.raises(ZooError, match="push the full run"):
        adapted.made_whole(only, "test", lambda source: pytest.fail("fetched a base it cannot check"))


def test_adapter_only_pushes_that_nobody_could_apply_are_refused_before_sending(
    mnist_dir: Path, tmp_path: Path
) -> None:
    full = write_finished_run(tmp_path / "full")
    full.write_weights({"weight": torch.zeros(1)}, {"format": "pt"})
    with pytest.raises(ZooError, match="not trained with model.adapter"):
        hub.push(full.path, "org/name", adapter_only=True)
    scratch = run(recipes.load(RECIPES / "mnist.toml", [*CNN, *CNN_LORA, f"output.dir={tmp_path / 'scratch'}"]),
                  progress=False)  # fmt: skip
    with pytest.raises(ZooError, match="random or a plugin's own"):
        hub.push(scratch.folder, "org/name", adapter_only=True)


@given(
    org=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.]{0,8}", fullmatch=True),
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}[A-Za-z0-9]", fullmatch=True).filter(lambda n: "--" not in n),
    commit=st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
)
def test_a_hub_cache_snapshot_is_pinned_as_its_repo_at_its_commit(org: str, name: str, commit: str) -> None:
    snapshot = Path("/cache") / f"models--{org}--{name}" / "snapshots" / commit
    assert adapters.hub_snapshot(snapshot) == f"hf-hub:{org}/{name}@{commit}"
    assert adapters.hub_snapshot(snapshot.parent.parent / "refs" / commit) is None
    assert adapters.hub_snapshot(Path("/runs") / name) is None


def test_a_registry_entry_pins_adapter_files_and_base_or_merged_weights() -> None:
    pin = FilePin(sha256="0" * 64, size=1)
    base = adapters.BasePin(source="hf-hub:org/base@" + "1" * 40, files={RunFolder.WEIGHTS: pin})
    files = {RunFolder.CONFIG: pin, RunFolder.ADAPTER_CONFIG: pin, RunFolder.ADAPTER_WEIGHTS: pin}
    registry.HubSource(repo="org/lora", revision="2" * 40, files=files, base=base)
    with pytest.raises(ValidationError, match=RunFolder.WEIGHTS):  # no base: the merged weights are needed
        registry.HubSource(repo="org/lora", revision="2" * 40, files=files)
    with pytest.raises(ValidationError, match=RunFolder.ADAPTER_WEIGHTS):
        registry.HubSource(
            repo="org/lora", revision="2" * 40, files={RunFolder.CONFIG: pin, RunFolder.ADAPTER_CONFIG: pin}, base=base
        )


# Through the Hub: a base pushed, an adapter trained on it as hf-hub:, shared alone and read back.


@pytest.fixture(scope="module")
def shared(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A full ViT pushed to a local Hub as the base, and a LoRA run trained on it through ``hf-hub:``."""
    root = tmp_path_factory.mktemp("shared")
    with FakeHub() as server:
        env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN,
               "HF_HOME": str(root / "hf-home"), "HF_HUB_CACHE": str(root / "hf-cache"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "ZOO_CACHE_DIR": str(root / "zoo-cache")}  # fmt: skip
        base = run(recipes.load(RECIPES / "mnist.toml", [*VIT, f"output.dir={root / 'base'}"]), progress=False).folder
        ok(zoo_command("push", str(base), "--repo", "zoo-test/vit-base", env=env))
        commit = server.state.repos["zoo-test/vit-base"].branches["main"]
        trained = zoo_command("run", str(RECIPES / "mnist.toml"), "--no-progress", *VIT, *VIT_LORA,
                              "model.pretrained=hf-hub:zoo-test/vit-base", f"output.dir={root / 'lora'}", env=env)  # fmt: skip
        ok(trained)
        yield {"server": server, "env": env, "base": Path(base), "lora": root / "lora", "commit": commit}


def ok(result) -> str:
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return result.stdout


def empty_caches(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**env, "HF_HUB_CACHE": str(tmp_path / "empty-hf"), "ZOO_CACHE_DIR": str(tmp_path / "empty-zoo")}


def predicted(run_spec: str, files: list[Path], env: dict[str, str]) -> list[dict]:
    return json.loads(ok(zoo_command("predict", run_spec, *map(str, files), "--json", env=env)))


def digit_files(mnist_png: Path) -> list[Path]:
    return [sorted((mnist_png / "test" / digit).iterdir())[index] for digit in "012" for index in range(4)]


@pytest.mark.slow
def test_an_adapter_trained_on_hub_weights_pins_their_commit(shared: dict) -> None:
    pin = adapters.base_pin_of(RunFolder(shared["lora"]))
    assert pin is not None and pin.source == f"hf-hub:zoo-test/vit-base@{shared['commit']}"
    for name in (RunFolder.WEIGHTS, RunFolder.CONFIG):
        assert pin.files[name].sha256 == sha256(shared["base"] / name), name


@pytest.mark.slow
def test_an_adapter_only_push_pulled_into_empty_caches_predicts_as_the_run(
    shared: dict, mnist_png: Path, tmp_path: Path
) -> None:
    server, lora = shared["server"], shared["lora"]
    output = ok(zoo_command("push", str(lora), "--repo", "zoo-test/vit-lora", "--adapter-only", env=shared["env"]))
    served = server.state.repos["zoo-test/vit-lora"].commits[server.state.repos["zoo-test/vit-lora"].branches["main"]]
    assert output.split("commit ")[-1].strip() in server.state.repos["zoo-test/vit-lora"].commits
    assert RunFolder.WEIGHTS not in served
    assert {RunFolder.ADAPTER_CONFIG, RunFolder.ADAPTER_WEIGHTS, RunFolder.CONFIG, RunFolder.MODEL_CARD,
            RunFolder.RESULTS, RunFolder.RECIPE} <= set(served)  # fmt: skip
    assert sum(len(blob.data) for blob in served.values()) < (lora / RunFolder.WEIGHTS).stat().st_size
    (tmp_path / "registry.json").write_text('{"schema": 2, "weights": {}}')
    named = {**shared["env"], "ZOO_REGISTRY": str(tmp_path / "registry.json")}
    added = ok(zoo_command("registry", "add", str(lora), "--name", "vit-lora-added", env=named))  # what was pushed
    assert f"adapter_model.safetensors sha256 {sha256(lora / RunFolder.ADAPTER_WEIGHTS)}" in added
    assert f"base hf-hub:zoo-test/vit-base@{shared['commit']}" in added
    entry = json.loads((tmp_path / "registry.json").read_text())["weights"]["vit-lora-added"]["sources"]["hub"]
    assert (
        RunFolder.WEIGHTS not in entry["files"]
        and entry["base"] == json.loads((lora / RunFolder.CONFIG).read_text())["zoo"][adapters.BASE_KEY]
    )

    env = empty_caches(shared["env"], tmp_path)
    folder = Path(ok(zoo_command("pull", "zoo-test/vit-lora", env=env)).strip())
    assert folder.is_relative_to(tmp_path / "empty-zoo" / "adapted")
    assert (tmp_path / "empty-hf" / "models--zoo-test--vit-base").is_dir()  # the base came through the Hub cache
    merged, kept = load_file(folder / RunFolder.WEIGHTS), load_file(lora / RunFolder.WEIGHTS)
    assert merged.keys() == kept.keys() and all(merged[name].equal(kept[name]) for name in kept)

    files = digit_files(mnist_png)
    remote, local = predicted("hf-hub:zoo-test/vit-lora", files, env), predicted(str(lora), files, env)
    assert [p["top"][0]["label"] for p in remote] == [p["top"][0]["label"] for p in local]
    results = json.loads((lora / RunFolder.RESULTS).read_text())
    evaluated = json.loads(ok(zoo_command("eval", "hf-hub:zoo-test/vit-lora", "--json", env=env)))
    assert evaluated["accuracy"] == results["test"]["accuracy"]
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert Path(ok(zoo_command("pull", "zoo-test/vit-lora", env=offline)).strip()) == folder


@pytest.mark.slow
def test_a_base_tampered_in_the_cache_is_refused_naming_the_file(shared: dict, tmp_path: Path) -> None:
    ok(zoo_command("push", str(shared["lora"]), "--repo", "zoo-test/vit-lora", "--adapter-only", env=shared["env"]))
    env = empty_caches(shared["env"], tmp_path)
    base = Path(ok(zoo_command("pull", f"zoo-test/vit-base@{shared['commit']}", env=env)).strip())
    blob = (base / RunFolder.WEIGHTS).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    refused = zoo_command("pull", "zoo-test/vit-lora", env=env)  # the base's commit: served from the cache
    pinned = sha256(shared["base"] / RunFolder.WEIGHTS)
    assert_user_error(refused, "hf-hub:zoo-test/vit-lora", RunFolder.WEIGHTS, pinned, "refusing to apply the adapter")
    assert not list((tmp_path / "empty-zoo").glob("adapted/*/model.safetensors"))


@pytest.mark.slow
def test_publish_of_an_adapter_pins_its_files_and_its_base(shared: dict, mnist_png: Path, tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text('{"schema": 2, "weights": {}}')
    env = {**shared["env"], "ZOO_REGISTRY": str(tmp_path / "registry.json")}
    lora = shutil.copytree(shared["lora"], tmp_path / "lora", ignore=shutil.ignore_patterns("hub.json"))
    ok(zoo_command("publish", str(lora), "--repo", "zoo-test/vit-lora-pub", "--name", "vit-lora", "--adapter-only",
                   env=env))  # fmt: skip
    pinned = json.loads((tmp_path / "registry.json").read_text())["weights"]["vit-lora"]["sources"]["hub"]
    assert RunFolder.WEIGHTS not in pinned["files"]
    for name in (RunFolder.ADAPTER_WEIGHTS, RunFolder.ADAPTER_CONFIG, RunFolder.CONFIG):
        assert pinned["files"][name]["sha256"] == sha256(lora / name), name
    assert pinned["base"]["source"] == f"hf-hub:zoo-test/vit-base@{shared['commit']}"
    assert {name: pin["sha256"] for name, pin in pinned["base"]["files"].items()} == {
        name: sha256(shared["base"] / name) for name in (RunFolder.WEIGHTS, RunFolder.CONFIG)
    }
    assert "1 named weights, valid" in ok(zoo_command("registry", "check", env=env))

    files = digit_files(mnist_png)[:3]
    fresh = empty_caches(env, tmp_path)
    by_name = predicted("registry:vit-lora", files, fresh)
    assert [p["top"][0]["label"] for p in by_name] == [p["top"][0]["label"] for p in predicted(str(lora), files, env)]

    registry_file = json.loads((tmp_path / "registry.json").read_text())
    registry_file["weights"]["vit-lora"]["sources"]["hub"]["base"]["files"][RunFolder.WEIGHTS]["sha256"] = "0" * 64
    (tmp_path / "registry.json").write_text(json.dumps(registry_file))
    refused = zoo_command("predict", "registry:vit-lora", str(files[0]), env=fresh)
    assert_user_error(refused, "registry:vit-lora", "registry.json pins the base", "refusing to apply the adapter")


@pytest.mark.slow
def test_a_batchnorm_backbone_s_adapter_alone_gives_the_run_s_weights(mnist_dir: Path, tmp_path: Path) -> None:
    """Frozen BatchNorm keeps the base's statistics, so the adapter files and the base hold every weight."""
    base = run(recipes.load(RECIPES / "mnist.toml", [*RESNET, f"output.dir={tmp_path / 'base'}"]), progress=False)
    lora = run(recipes.load(RECIPES / "mnist.toml", [*RESNET, "data.classes=[2,3]", f"model.pretrained={base.folder}",
                                                      'model.adapter={target = "conv", r = 2}',
                                                      f"output.dir={tmp_path / 'lora'}"]), progress=False)  # fmt: skip
    only = adapter_only_copy(Path(lora.folder), tmp_path / "only")
    whole = adapted.made_whole(only, "test", Path)
    merged, kept = load_file(whole / RunFolder.WEIGHTS), load_file(Path(lora.folder) / RunFolder.WEIGHTS)
    assert any("running_mean" in name for name in kept)
    assert merged.keys() == kept.keys() and all(merged[name].equal(kept[name]) for name in kept)


@pytest.mark.slow
def test_two_processes_pulling_one_adapter_merge_it_once(shared: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    ok(zoo_command("push", str(shared["lora"]), "--repo", "zoo-test/vit-lora", "--adapter-only", env=shared["env"]))
    env = {**os.environ, **empty_caches(shared["env"], tmp_path)}
    zoo = str(Path(sys.executable).with_name("zoo"))
    pulls = [subprocess.Popen([zoo, "pull", "zoo-test/vit-lora"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outputs = [pull.communicate(timeout=600) for pull in pulls]
    assert [pull.returncode for pull in pulls] == [0, 0], [err for _, err in outputs]
    folders = {Path(out.strip()) for out, _ in outputs}
    merged_folders = [path for path in (tmp_path / "empty-zoo" / "adapted").iterdir() if not path.name.startswith(".")]
    assert len(folders) == 1 and merged_folders == [*folders]  # no staging folder left behind
    merged, kept = load_file(folders.pop() / RunFolder.WEIGHTS), load_file(shared["lora"] / RunFolder.WEIGHTS)
    assert all(merged[name].equal(kept[name]) for name in kept)


def test_a_resumed_adapter_run_pins_the_base_it_trained_on_not_what_its_source_holds_now(
    cnn_runs: tuple[Path, Path], mnist_dir: Path, tmp_path: Path
) -> None:
    base, _ = cnn_runs
    source = tmp_path / "base"
    shutil.copytree(base, source)
    first = [*CNN, *CNN_LORA, f"model.pretrained={source}", f"output.dir={tmp_path / 'lora'}"]
    run(recipes.load(RECIPES / "mnist.toml", first), progress=False)
    trained_on = adapters.base_pin_of(RunFolder(tmp_path / "lora"))
    other = run(recipes.load(RECIPES / "mnist.toml", [*CNN, "train.seed=7", f"output.dir={tmp_path / 'other'}"]),
                progress=False)  # fmt: skip
    shutil.copy(other.folder / RunFolder.WEIGHTS, source / RunFolder.WEIGHTS)  # the folder's weights replaced
    run(recipes.load(RECIPES / "mnist.toml", [*first, "train.epochs=2"]), progress=False, resume=tmp_path / "lora")
    resumed = adapters.base_pin_of(RunFolder(tmp_path / "lora"))
    assert trained_on is not None and resumed == trained_on
    assert (
        resumed.files[RunFolder.WEIGHTS].sha256
        == sha256(base / RunFolder.WEIGHTS)
        != sha256(source / RunFolder.WEIGHTS)
    )


def test_an_adapter_only_push_over_a_full_one_leaves_no_merged_weights_on_the_branch(
    cnn_runs: tuple[Path, Path], hub: tuple[FakeHub, dict[str, str]]
) -> None:
    """The branch then holds only this push's files: an earlier push's weights would answer for this run."""
    server, env = hub
    _, lora = cnn_runs
    ok(zoo_command("push", str(lora), "--repo", "zoo-test/lora", env=env))
    repo = server.state.repos["zoo-test/lora"]
    assert RunFolder.WEIGHTS in repo.commits[repo.branches["main"]]
    ok(zoo_command("push", str(lora), "--repo", "zoo-test/lora", "--adapter-only", env=env))
    served = repo.commits[repo.branches["main"]]
    assert RunFolder.WEIGHTS not in served and RunFolder.ADAPTER_WEIGHTS in served


@pytest.mark.parametrize("damage", ["a tensor missing", "DoRA claimed for LoRA weights"])
def test_adapter_files_that_do_not_hold_what_their_config_asks_for_are_one_line(
    cnn_runs: tuple[Path, Path], tmp_path: Path, damage: str
) -> None:
    """peft itself only warns, and merges fresh weights where a tensor is missing."""
    from safetensors.torch import save_file

    base, lora = cnn_runs
    only = adapter_only_copy(lora, tmp_path / "only")
    if damage == "a tensor missing":
        tensors = load_file(only / RunFolder.ADAPTER_WEIGHTS)
        save_file({name: t for name, t in tensors.items() if "lora_B" not in name}, only / RunFolder.ADAPTER_WEIGHTS)
    else:
        config = json.loads((only / RunFolder.ADAPTER_CONFIG).read_text())
        (only / RunFolder.ADAPTER_CONFIG).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ZooError, match="adapter_model.safetensors lacks .* it is damaged or belongs to other settings"):
        adapted.made_whole(only, "test", lambda source: base)
    assert not list((adapted.cache_dir() / "adapted").glob(f"*/{RunFolder.WEIGHTS}"))  # nothing merged is kept


def test_a_base_that_cannot_be_fetched_is_named_as_the_adapter_s_base(
    cnn_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    _, lora = cnn_runs
    only = adapter_only_copy(lora, tmp_path / "only")

    def gone(source: str) -> Path:
        raise ZooError(f"{source}: no such revision on the Hub")

    with pytest.raises(
        ZooError, match=r"^hf-hub:zoo-test/lora adapts the base \S+, which cannot be fetched: .*no such revision"
    ):
        adapted.made_whole(only, "hf-hub:zoo-test/lora", gone)


def test_a_local_adapter_only_folder_is_made_whole_from_the_base_named_here(
    cnn_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """`zoo predict FOLDER` and the other readers of a run folder merge an adapter copied alone too; the pin
    names a local base by its folder's name, found from here."""
    from zoo.sharing.resolve import local_run_folder

    base, lora = cnn_runs
    only = adapter_only_copy(lora, tmp_path / "only")
    with pytest.raises(ZooError, match="adapts the base base, which cannot be fetched"):
        local_run_folder(str(only))
    shutil.copytree(base, tmp_path / "base")  # the tests run in tmp_path
    merged, kept = load_file(local_run_folder(str(only)) / RunFolder.WEIGHTS), load_file(lora / RunFolder.WEIGHTS)
    assert merged.keys() == kept.keys() and all(merged[name].equal(kept[name]) for name in kept)
