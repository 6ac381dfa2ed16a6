"""zoo push / pull / registry against a Hub-protocol server on 127.0.0.1, through the real client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPES, TOKEN, assert_user_error, zoo_command
from hub_server import Blob, Repo
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

import zoo
from zoo.config import recipe as recipes
from zoo.runs.folder import RunFolder
from zoo.training.runner import run

pytestmark = pytest.mark.slow

SHARED = ["model.safetensors", "config.json", "README.md", "recipe.toml", "results.json"]
SMALL = [
    "data.classes=[0,1,2]",
    "data.per_class=500",
    "data.val_split=0.02",
    "data.batch_size=64",
    "train.epochs=1",
    "train.precision=fp32",
]


@pytest.fixture(scope="session")
def versions(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two finished runs of the same small recipe with different seeds: two versions of one model."""
    root = tmp_path_factory.mktemp("versions")
    return [
        run(
            recipes.load(RECIPES / "mnist.toml", [*SMALL, f"train.seed={seed}", f"output.dir={root / f'v{seed}'}"]),
            progress=False,
        ).folder
        for seed in (1, 2)
    ]


def zoo_ok(*args: str, env: dict[str, str]) -> str:
    result = zoo_command(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return result.stdout


def unpushed_copy(version: Path, folder: Path) -> Path:
    """A copy of a trained run folder as if never pushed (an earlier test may have pushed the original)."""
    shutil.copytree(version, folder)
    (folder / "hub.json").unlink(missing_ok=True)
    return folder


def with_empty_registry(env: dict[str, str], path: Path) -> dict[str, str]:
    """``env`` with ZOO_REGISTRY naming a new, empty registry.json at ``path``."""
    path.write_text('{"schema": 2, "weights": {}}')
    return {**env, "ZOO_REGISTRY": str(path)}


def pushed_commit(output: str) -> str:
    commit = output.split("commit ")[-1].strip()
    assert len(commit) == 40 and int(commit, 16) >= 0
    return commit


def no_file_holds_the_token(*folders: Path) -> None:
    for folder in folders:
        for file in folder.rglob("*"):
            if file.is_file():
                assert TOKEN.encode() not in file.read_bytes(), file


def test_push_then_pull_gives_the_same_files_and_logits(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    source = versions[0]
    output = zoo_ok("push", str(source), "--repo", "zoo-test/digits", "--message", "first version", env=env)
    assert f"pushed {source} to {server.url}/zoo-test/digits" in output
    commit = pushed_commit(output)
    assert server.file("zoo-test/digits", commit, "model.safetensors").lfs  # uploaded through git-LFS
    assert f"Bearer {TOKEN}" in server.state.authorizations  # the token was used, through huggingface_hub
    assert any(request.startswith("POST /api/validate-yaml") for request in server.state.requests)

    folder = Path(zoo_ok("pull", "zoo-test/digits", env=env).strip())
    assert folder.is_relative_to(tmp_path / "hf-cache")
    for name in [*SHARED, "loss.png", "confusion_matrix.png"]:
        if name == "recipe.toml":  # pushed without this machine's paths (output.dir, data.root)
            assert (folder / name).read_text() == RunFolder(source).recipe.shareable().to_toml()
        else:
            assert (folder / name).read_bytes() == (source / name).read_bytes(), name
        assert str(tmp_path).encode() not in (folder / name).read_bytes(), f"{name} holds a local path"
    pulled = zoo.load(folder)
    labels = pulled.label_names
    original = zoo.load(source)
    inputs = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(pulled(inputs), original(inputs)) and labels == ["0", "1", "2"]
    script = "import zoo; print(zoo.load('hf-hub:zoo-test/digits').label_names)"  # as a command's RUN: pulled
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, **env})
    assert loaded.returncode == 0 and loaded.stdout.strip() == "['0', '1', '2']", loaded.stderr
    no_file_holds_the_token(source, tmp_path / "hf-cache")


def test_each_revision_pulls_its_own_version(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    first = pushed_commit(zoo_ok("push", str(versions[0]), "--repo", "zoo-test/digits", env=env))
    second = pushed_commit(zoo_ok("push", str(versions[1]), "--repo", "zoo-test/digits", env=env))
    branch = pushed_commit(
        zoo_ok("push", str(versions[0]), "--repo", "zoo-test/digits", "--revision", "v1-branch", env=env)
    )
    assert len({first, second, branch}) == 3
    expectations = {f"@{first}": versions[0], f"@{second}": versions[1], "": versions[1], "@v1-branch": versions[0]}
    for revision, version in expectations.items():
        folder = Path(zoo_ok("pull", f"zoo-test/digits{revision}", env=env).strip())
        assert (folder / "model.safetensors").read_bytes() == (version / "model.safetensors").read_bytes(), revision


def test_registry_pins_the_commit_and_refuses_a_tampered_file(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    env = with_empty_registry(env, tmp_path / "registry.json")
    commit = pushed_commit(zoo_ok("push", str(versions[0]), "--repo", "zoo-test/digits", env=env))
    assert commit in zoo_ok("registry", "add", str(versions[0]), "--name", "digits-012", env=env)
    zoo_ok("push", str(versions[1]), "--repo", "zoo-test/digits", env=env)  # main moves on; the name does not

    entry = json.loads((tmp_path / "registry.json").read_text())["weights"]["digits-012"]
    weights = versions[0] / "model.safetensors"
    hub_source = entry["sources"]["hub"]
    assert (hub_source["repo"], hub_source["revision"]) == ("zoo-test/digits", commit)
    pinned = hub_source["files"]
    assert set(pinned) >= {"model.safetensors", "config.json", "recipe.toml", "README.md", "results.json"}
    assert pinned["model.safetensors"] == {
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size": weights.stat().st_size,
    }
    assert entry["label_names"] == ["0", "1", "2"] and entry["metrics"]["accuracy"] > 0.9
    assert "digits-012" in zoo_ok("registry", "list", env=env)
    assert "1 named weights, valid" in zoo_ok("registry", "check", env=env)

    folder = Path(zoo_ok("pull", "digits-012", env=env).strip())
    assert (folder / "model.safetensors").read_bytes() == weights.read_bytes()  # the pinned commit, not main
    for name, pin in pinned.items():  # every pulled file is the pinned one
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == pin["sha256"], name
    for tampered in ("config.json", "model.safetensors"):  # config.json decides the plugin and labels
        blob = (folder / tampered).resolve()
        original = blob.read_bytes()
        blob.chmod(0o644)
        blob.write_bytes(original[:-1] + b"!")  # tampered in the cache
        refused = zoo_command("pull", "digits-012", env={**env, "HF_HUB_OFFLINE": "1"})
        assert_user_error(refused, "refusing to load it", tampered, pinned[tampered]["sha256"])
        blob.write_bytes(original)
    no_file_holds_the_token(tmp_path)


def test_a_recipe_fine_tunes_from_hf_hub_weights(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    commit = pushed_commit(zoo_ok("push", str(versions[0]), "--repo", "zoo-test/digits", env=env))
    folder = tmp_path / "fine"
    output = zoo_ok(
        "run", str(RECIPES / "mnist_finetune.toml"), "--no-progress", f"model.pretrained=hf-hub:zoo-test/digits@{commit}",
        "data.per_class=20", "train.epochs=2", f"output.dir={folder}", env=env,
    )  # fmt: skip
    assert "loaded backbone from" in output and "new head for 5 classes" in output
    tuned = json.loads((folder / "config.json").read_text())
    assert tuned["label_names"] == list("56789")
    frozen = zoo.load(folder).backbone.conv1.weight
    assert torch.equal(frozen, zoo.load(versions[0]).backbone.conv1.weight)  # from the pulled weights, frozen
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "zoo-test/digits"


def test_registry_names_are_weight_sources_pinned_and_checked(hub, versions: list[Path], tmp_path: Path) -> None:
    """`registry:NAME` fine-tunes from the pinned commit (not main), and an hf-hub source at that commit
    is checked against the same pins: a tampered cached file stops both."""
    server, env = hub
    env = with_empty_registry(env, tmp_path / "registry.json")
    commit = pushed_commit(zoo_ok("push", str(versions[0]), "--repo", "zoo-test/digits", env=env))
    zoo_ok("registry", "add", str(versions[0]), "--name", "digits-012", env=env)
    zoo_ok("push", str(versions[1]), "--repo", "zoo-test/digits", env=env)  # main moves on
    finetune = [str(RECIPES / "mnist_finetune.toml"), "--no-progress", "data.per_class=20", "train.epochs=1"]
    output = zoo_ok("run", *finetune, "model.pretrained=registry:digits-012", f"output.dir={tmp_path / 'a'}", env=env)
    assert "loaded backbone from" in output
    assert torch.equal(zoo.load(tmp_path / "a").backbone.conv1.weight, zoo.load(versions[0]).backbone.conv1.weight)
    assert ModelCard.load(tmp_path / "a" / "README.md").data.base_model == "zoo-test/digits"
    assert "registry:digits-012" in (tmp_path / "a" / "recipe.toml").read_text()

    cached = (Path(zoo_ok("pull", "digits-012", env=env).strip()) / "config.json").resolve()
    original = cached.read_bytes()
    cached.chmod(0o644)
    cached.write_bytes(original.replace(b'"num_classes"', b'"num_classes" ', 1))  # tampered in the cache
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    for source in ("registry:digits-012", f"hf-hub:zoo-test/digits@{commit}"):
        refused = zoo_command(
            "run", *finetune, f"model.pretrained={source}", f"output.dir={tmp_path / 'b'}", env=offline
        )
        assert_user_error(refused, "refusing to load it", "config.json")
    cached.write_bytes(original)
    missing = zoo_command("run", *finetune, "model.pretrained=registry:digits-013", env=env)
    assert_user_error(missing, "no weights named 'digits-013'", "did you mean 'digits-012'")


def test_offline_pulls_come_from_the_cache_and_a_miss_is_one_line(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    zoo_ok("push", str(versions[0]), "--repo", "zoo-test/digits", env=env)
    online = zoo_ok("pull", "zoo-test/digits", env=env).strip()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert zoo_ok("pull", "zoo-test/digits", env=offline).strip() == online
    assert_user_error(
        zoo_command("pull", "zoo-test/other", env=offline),
        "zoo-test/other",
        "not in the Hugging Face cache",
        "HF_HUB_OFFLINE",
    )


def test_push_refuses_unfinished_runs_and_missing_repos_are_one_line(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    unfinished = tmp_path / "unfinished"
    shutil.copytree(versions[0], unfinished)
    (unfinished / "results.json").write_text('{"state": "interrupted"}')
    assert_user_error(zoo_command("push", str(unfinished), "--repo", "zoo-test/x", env=env), "not a finished zoo run")
    assert_user_error(zoo_command("pull", "zoo-test/nothing-here", env=env), "zoo-test/nothing-here")
    assert_user_error(zoo_command("pull", "zoo-test/digits@v9", env=env), "zoo-test/digits@v9")
    for bad in ("../../etc", "org/na me", "org/"):
        assert_user_error(zoo_command("push", str(versions[0]), "--repo", bad, env=env), "is not a Hub repo id")
        assert_user_error(zoo_command("pull", bad, env=env), "is not a Hub repo")


@pytest.mark.parametrize("link", ["README.md", "config.json"])
def test_push_never_follows_a_symlink_to_a_secret(hub, versions: list[Path], tmp_path: Path, link: str) -> None:
    server, env = hub
    secret = tmp_path / "token.txt"
    secret.write_text(TOKEN)
    run = unpushed_copy(versions[0], tmp_path / "run")
    (run / link).unlink()
    (run / link).symlink_to(secret)
    assert_user_error(zoo_command("push", str(run), "--repo", "zoo-test/leak", env=env), f"{link} is a symbolic link")
    assert "zoo-test/leak" not in server.state.repos  # refused before anything reached the Hub
    assert not (run / "hub.json").exists()


def test_registry_add_refuses_a_run_changed_after_its_push(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    env = with_empty_registry(env, tmp_path / "registry.json")
    run = tmp_path / "run"
    shutil.copytree(versions[0], run)
    commit = pushed_commit(zoo_ok("push", str(run), "--repo", "zoo-test/digits", env=env))
    shutil.copy(versions[1] / "model.safetensors", run / "model.safetensors")  # resumed and trained on, say
    refused = zoo_command("registry", "add", str(run), "--name", "digits", env=env)
    assert_user_error(refused, "model.safetensors is not what commit", commit[:12], "push it again")
    assert json.loads((tmp_path / "registry.json").read_text())["weights"] == {}


def test_a_push_whose_record_cannot_be_written_still_names_its_commit(
    hub, versions: list[Path], tmp_path: Path
) -> None:
    server, env = hub
    run = unpushed_copy(versions[0], tmp_path / "run")
    (run / "hub.json").mkdir()  # the record cannot be written where it belongs
    line = assert_user_error(zoo_command("push", str(run), "--repo", "zoo-test/digits", env=env), "as commit")
    commit = line.split("as commit ")[1].split(",")[0]
    assert server.file("zoo-test/digits", commit, "model.safetensors").lfs


def test_the_model_card_parses_and_matches_the_results(versions: list[Path]) -> None:
    card = ModelCard.load(versions[0] / "README.md")
    results = json.loads((versions[0] / "results.json").read_text())["test"]
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported == {key: pytest.approx(results[key], abs=1e-6) for key in ("accuracy", "precision", "recall", "f1")}
    assert (
        card.data.library_name == "zoo" and card.data.license == "apache-2.0" and card.data.datasets == ["ylecun/mnist"]
    )
    assert all(
        result.dataset_split == "test" and result.task_type == "image-classification"
        for result in card.data.eval_results
    )
    assert "zoo.load(" in card.text and "```toml" in card.text


def test_remote_file_names_cannot_write_outside_the_cache(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    weights = Blob((versions[0] / "model.safetensors").read_bytes(), True)
    hostile = {
        "model.safetensors": weights,
        "../../../escape.png": Blob(b"x", True),
        "sub/../../up.png": Blob(b"y", False),
    }
    server.state.new_commit(server.state.repos.setdefault("zoo-test/hostile", Repo()), hostile, "main")
    folder = Path(zoo_ok("pull", "zoo-test/hostile", env=env).strip())
    assert sorted(path.name for path in folder.iterdir()) == ["model.safetensors"]
    written = [path for path in tmp_path.parent.rglob("*") if path.name in ("escape.png", "up.png")]
    assert not written


def test_publish_pins_what_the_hub_serves_and_refuses_taken_names(hub, versions: list[Path], tmp_path: Path) -> None:
    """One command pushes and pins from the Hub's read-back; exports go along and the pushed files hold no
    local path; a published name serves `zoo eval` and `zoo predict`."""
    server, env = hub
    env = with_empty_registry(env, tmp_path / "registry.json")
    run = unpushed_copy(versions[0], tmp_path / "run")
    zoo_ok("export", str(run), "--format", "onnx", env=env)
    output = zoo_ok("publish", str(run), "--repo", "zoo-test/published", "--name", "digits-pub", env=env)
    commit = server.state.repos["zoo-test/published"].branches["main"]
    assert f"digits-pub -> zoo-test/published@{commit}" in output and "read back and pinned" in output
    pinned = json.loads((tmp_path / "registry.json").read_text())["weights"]["digits-pub"]["sources"]["hub"]
    assert pinned["revision"] == commit and "model.onnx" in pinned["files"]
    served = server.state.repos["zoo-test/published"].commits[commit]
    served = {name: blob for name, blob in served.items() if name != ".gitattributes"}  # the Hub's own
    assert pinned["files"] == {name: {"sha256": blob.sha256, "size": len(blob.data)} for name, blob in served.items()}
    local_paths = [str(tmp_path), str(versions[0].parent), str(RECIPES.parent)]
    for name, blob in served.items():
        assert not any(path.encode() in blob.data for path in local_paths), name
    assert "`model.onnx`" in served["README.md"].data.decode()  # the card says how to run the export

    count = server.state.commit_count
    again = zoo_command("publish", str(run), "--repo", "zoo-test/published", "--name", "digits-pub", env=env)
    assert_user_error(again, "already names 'digits-pub'", "--replace")
    assert server.state.commit_count == count  # refused before anything was pushed
    zoo_ok("publish", str(run), "--repo", "zoo-test/published", "--name", "digits-pub", "--replace", env=env)
    replaced = json.loads((tmp_path / "registry.json").read_text())["weights"]["digits-pub"]["sources"]["hub"]
    assert replaced["revision"] == server.state.repos["zoo-test/published"].branches["main"] != commit

    server.state.garble = {"config.json"}  # the Hub now stores other bytes than it is sent
    garbled = zoo_command("publish", str(run), "--repo", "zoo-test/published", "--name", "digits-bad", env=env)
    assert_user_error(garbled, "config.json", "not the", "nothing was pinned")
    server.state.garble = set()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "results.json").write_text('{"state": "interrupted"}')
    refused = zoo_command("publish", str(unfinished), "--repo", "zoo-test/published", "--name", "digits-new", env=env)
    assert_user_error(refused, "not a finished zoo run")
    assert sorted(json.loads((tmp_path / "registry.json").read_text())["weights"]) == ["digits-pub"]

    image = tmp_path / "digit.png"
    Image.fromarray((torch.rand(28, 28) * 255).to(torch.uint8).numpy()).save(image)
    predictions = {
        backend: json.loads(
            zoo_ok("predict", "registry:digits-pub", str(image), "--backend", backend, "--json", env=env)
        )
        for backend in ("torch", "onnxruntime")
    }
    assert [t["label"] for t in predictions["torch"][0]["top"]] == [
        t["label"] for t in predictions["onnxruntime"][0]["top"]
    ]
    metrics = json.loads(zoo_ok("eval", "registry:digits-pub", "--json", env=env))
    assert metrics["accuracy"] == json.loads((versions[0] / "results.json").read_text())["test"]["accuracy"]


def test_publish_refuses_what_registry_add_would_refuse_before_it_pushes(
    hub, versions: list[Path], tmp_path: Path
) -> None:
    """A missing --recipe, and with --replace a damaged or Hub-only registry, were found after the push:
    exit 2 with 'pushed to ... as commit ..., but', and a commit on the Hub for nothing."""
    server, env = hub
    env = with_empty_registry(env, tmp_path / "registry.json")
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"schema": 2, "weights": {')
    run = unpushed_copy(versions[0], tmp_path / "run")
    publish = ["publish", str(run), "--repo", "zoo-test/early", "--name", "digits"]
    mistakes = [
        ([*publish, "--recipe", str(tmp_path / "nope.toml")], env, ("--recipe", "nope.toml", "no such recipe file")),
        ([*publish, "--replace"], {**env, "ZOO_REGISTRY": str(damaged)}, (str(damaged), "not valid JSON")),
        ([*publish, "--replace"], {**env, "ZOO_REGISTRY": "hf-hub:rev/none"}, ("names only Hub registries",)),
    ]
    for command, where, fragments in mistakes:
        assert "pushed to" not in assert_user_error(zoo_command(*command, env=where), *fragments)
    assert "zoo-test/early" not in server.state.repos and server.state.commit_count == 0
    assert not (run / "hub.json").exists()
    assert json.loads((tmp_path / "registry.json").read_text())["weights"] == {}


def test_a_hub_registrys_recipes_extend_each_other_as_they_lie_in_the_repo(hub) -> None:
    """Pulled, each recipe is a link into the cache's blobs/: its extends must still name its neighbour."""
    server, env = hub
    entry = {"backbone": "mnist_cnn", "num_classes": 10, "label_names": [str(d) for d in range(10)],
             "sources": {"recipe": "recipes/digits.toml"}}  # fmt: skip
    files = {
        "registry.json": Blob(json.dumps({"schema": 2, "weights": {"digits": entry}}).encode(), False),
        "recipes/digits.toml": Blob(b'extends = "mnist.toml"\nname = "digits"\n[train]\nepochs = 1\n', False),
    }
    for name, base in (("zoo-test/recipes", (RECIPES / "mnist.toml").read_bytes()), ("zoo-test/baseless", None)):
        repo = {**files, **({"recipes/mnist.toml": Blob(base, False)} if base else {})}
        server.state.new_commit(server.state.repos.setdefault(name, Repo()), repo, "main")
    checked = zoo_ok("registry", "check", env={**env, "ZOO_REGISTRY": "hf-hub:zoo-test/recipes"})
    assert checked.startswith("hf-hub:zoo-test/recipes@") and checked.endswith(": 1 named weights, valid\n")
    broken = zoo_command("registry", "check", env={**env, "ZOO_REGISTRY": "hf-hub:zoo-test/baseless"})
    assert_user_error(broken, "weights.digits.sources.recipe", "recipes/mnist.toml")
    assert "recipe not found" in broken.stderr


@pytest.mark.parametrize("where", ["up and out", "absolute"])
def test_a_hub_registrys_recipe_must_be_a_file_of_its_repo(hub, tmp_path: Path, where: str) -> None:
    """Nothing outside the pulled snapshot is pinned: a name must not stand for whatever a path holds here."""
    server, env = hub
    victim, work = tmp_path / "elsewhere" / "victim.toml", tmp_path / "work"
    victim.parent.mkdir()
    work.mkdir()
    victim.write_bytes((RECIPES / "mnist.toml").read_bytes())
    recipe = "../" * len(victim.parents) + str(victim).lstrip("/") if where == "up and out" else str(victim)
    entry = {"backbone": "mnist_cnn", "num_classes": 10, "label_names": [str(d) for d in range(10)],
             "sources": {"recipe": recipe}}  # fmt: skip
    files = {"registry.json": Blob(json.dumps({"schema": 2, "weights": {"outside": entry}}).encode(), False)}
    server.state.new_commit(server.state.repos.setdefault("zoo-test/outside", Repo()), files, "main")
    env = {**env, "ZOO_REGISTRY": "hf-hub:zoo-test/outside"}
    why = f"{recipe} is not in the registry's Hub repo"
    assert_user_error(zoo_command("registry", "check", env=env), "weights.outside.sources.recipe", why)
    run = ["run", str(RECIPES / "mnist_finetune.toml"), "model.pretrained=registry:outside", "--dry-run"]
    assert_user_error(zoo_command(*run, env=env, cwd=work), "weights.outside.sources.recipe", why)
    assert not list(work.iterdir())


def test_a_team_registry_on_the_hub_is_searched_after_the_local_one(hub, versions: list[Path], tmp_path: Path) -> None:
    server, env = hub
    api = HfApi(endpoint=server.url, token=TOKEN)
    team_file = tmp_path / "team" / "registry.json"
    team_file.parent.mkdir()
    team_file.write_text('{"schema": 2, "weights": {}}')
    run = unpushed_copy(versions[0], tmp_path / "run")
    team_env = {**env, "ZOO_REGISTRY": str(team_file)}
    zoo_ok("publish", str(run), "--repo", "zoo-test/digits", "--name", "team-digits", env=team_env)
    zoo_ok("registry", "add", str(run), "--name", "shared-name", env=team_env)
    api.create_repo("zoo-test/registry", exist_ok=True)
    first = api.upload_file(path_or_fileobj=team_file, path_in_repo="registry.json", repo_id="zoo-test/registry").oid
    later = json.loads(team_file.read_text())
    del later["weights"]["team-digits"]
    api.upload_file(
        path_or_fileobj=json.dumps(later).encode(), path_in_repo="registry.json", repo_id="zoo-test/registry"
    )

    local = tmp_path / "registry.json"
    local.write_text('{"schema": 2, "weights": {}}')
    recipe_only = ["registry", "add", str(run), "--name", "shared-name", "--recipe", str(RECIPES / "mnist.toml")]
    zoo_ok(*recipe_only, env={**env, "ZOO_REGISTRY": str(local)})
    pinned_env = {**env, "ZOO_REGISTRY": f"{local},hf-hub:zoo-test/registry@{first}"}
    listed = json.loads(zoo_ok("registry", "list", "--json", env=pinned_env))
    assert listed["team-digits"]["origin"] == f"hf-hub:zoo-test/registry@{first[:12]}"
    assert listed["shared-name"]["origin"] == str(local)  # the first registry that names it decides
    assert "recipe" in listed["shared-name"]["sources"]  # the team's own has none
    checked = zoo_ok("registry", "check", env=pinned_env).splitlines()
    assert checked == [
        f"{local}: 1 named weights, valid",
        f"hf-hub:zoo-test/registry@{first[:12]}: 2 named weights, valid",
    ]
    table = zoo_ok("registry", "list", env=pinned_env)
    assert "REGISTRY" in table and f"hf-hub:zoo-test/registry@{first[:12]}" in table
    assert json.loads(zoo_ok("registry", "list", "--backbone", "timm/*", "--json", env=pinned_env)) == {}
    assert set(json.loads(zoo_ok("registry", "list", "--backbone", "mnist_*", "--json", env=pinned_env))) == {
        "team-digits", "shared-name"
    }  # fmt: skip
    folder = Path(zoo_ok("pull", "team-digits", env=pinned_env).strip())
    assert (folder / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()

    latest_env = {**env, "ZOO_REGISTRY": f"{local},hf-hub:zoo-test/registry"}
    assert "team-digits" not in json.loads(zoo_ok("registry", "list", "--json", env=latest_env))
    assert_user_error(zoo_command("pull", "team-digits", env=latest_env), "no weights named 'team-digits'")
    hub_only = {**env, "ZOO_REGISTRY": "hf-hub:zoo-test/registry"}
    assert_user_error(
        zoo_command("registry", "add", str(run), "--name", "x", env=hub_only), "names only Hub registries"
    )
    missing = {**env, "ZOO_REGISTRY": f"{local},hf-hub:zoo-test/no-registry"}
    assert_user_error(zoo_command("registry", "list", env=missing), "zoo-test/no-registry")


def test_two_publishes_of_one_name_at_once_pin_one_run(hub, versions: list[Path], tmp_path: Path) -> None:
    """Both may push, but only one pins the name; the other says so in one line, naming its commit."""
    server, env = hub
    env = {**os.environ, **env, "ZOO_REGISTRY": str(tmp_path / "registry.json")}
    (tmp_path / "registry.json").write_text('{"schema": 2, "weights": {}}')
    runs = []
    for index, version in enumerate(versions):
        runs.append(tmp_path / f"run{index}")
        shutil.copytree(version, runs[-1])
        (runs[-1] / "hub.json").unlink(missing_ok=True)
    zoo = str(Path(sys.executable).with_name("zoo"))
    started = [
        subprocess.Popen(
            [zoo, "publish", str(run), "--repo", f"zoo-test/race{index}", "--name", "raced"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for index, run in enumerate(runs)
    ]
    outcomes = [(process.wait(timeout=300), process.stderr.read()) for process in started]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    refusal = next(stderr for code, stderr in outcomes if code == 2)
    assert len(refusal.strip().splitlines()) == 1 and "already names 'raced'" in refusal and "Traceback" not in refusal
    winner = next(index for index, (code, _) in enumerate(outcomes) if code == 0)
    pinned = json.loads((tmp_path / "registry.json").read_text())["weights"]["raced"]["sources"]["hub"]
    assert pinned["repo"] == f"zoo-test/race{winner}"
    assert pinned["revision"] == server.state.repos[f"zoo-test/race{winner}"].branches["main"]


def test_a_damaged_hub_registry_is_one_line_naming_it(hub, tmp_path: Path) -> None:
    server, env = hub
    api = HfApi(endpoint=server.url, token=TOKEN)
    api.create_repo("zoo-test/broken-registry")
    for damaged in (b'{"schema": 2, "weights": {"x": ', b'{"schema": 2, "weights": {"../x": {}}}', b"\xff\xfe"):
        api.upload_file(path_or_fileobj=damaged, path_in_repo="registry.json", repo_id="zoo-test/broken-registry")
        listed = zoo_command("registry", "list", env={**env, "ZOO_REGISTRY": "hf-hub:zoo-test/broken-registry"})
        assert_user_error(listed, "registry.json")


def test_stale_exports_and_nan_weights_are_refused_before_anything_is_shared(
    hub, versions: list[Path], tmp_path: Path
) -> None:
    """push and publish refuse, with nothing uploaded, a run whose export was made from other weights or
    whose weights are not finite; a pull refuses a repo serving an export of other weights."""
    server, env = hub
    env = with_empty_registry(env, tmp_path / "registry.json")
    run = unpushed_copy(versions[0], tmp_path / "run")
    zoo_ok("export", str(run), "--format", "exported-program", env=env)
    exported = (run / "model.pt2").read_bytes()
    shutil.copy(versions[1] / "model.safetensors", run / "model.safetensors")  # as if trained on after the export
    pushes = (["push", str(run), "--repo", "zoo-test/shared"], ["publish", str(run), "--repo", "zoo-test/shared"])
    for command in pushes:
        refused = zoo_command(*command, *(["--name", "digits"] if command[0] == "publish" else []), env=env)
        assert_user_error(refused, "model.pt2 is stale", "not the model.safetensors beside it", "zoo export")

    (run / "model.pt2").unlink()
    tensors = load_file(run / "model.safetensors")
    name = next(name for name, tensor in tensors.items() if tensor.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, run / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((run / "results.json").read_text())["state"] == "finished"
    for command in pushes:
        refused = zoo_command(*command, *(["--name", "digits"] if command[0] == "publish" else []), env=env)
        assert_user_error(refused, "holds NaN or infinite values", f"'{name}'", "not pushed")
    assert "zoo-test/shared" not in server.state.repos and server.state.commit_count == 0
    assert not (run / "hub.json").exists()
    assert json.loads((tmp_path / "registry.json").read_text())["weights"] == {}

    served = {
        RunFolder.WEIGHTS: Blob((versions[1] / "model.safetensors").read_bytes(), True),
        RunFolder.CONFIG: Blob((versions[1] / "config.json").read_bytes(), False),
        "model.pt2": Blob(exported, False),  # made from versions[0]'s weights
    }
    server.state.new_commit(server.state.repos.setdefault("zoo-test/stale", Repo()), served, "main")
    refused = zoo_command("pull", "zoo-test/stale", env=env)
    assert_user_error(refused, "model.pt2 is stale", "refusing to pull zoo-test/stale")
    served[RunFolder.WEIGHTS] = Blob((versions[0] / "model.safetensors").read_bytes(), True)
    server.state.new_commit(server.state.repos["zoo-test/stale"], served, "main")
    assert (Path(zoo_ok("pull", "zoo-test/stale", env=env).strip()) / "model.pt2").read_bytes() == exported


def test_a_pulled_repo_that_zoo_did_not_write_keeps_its_exports_unchecked(tmp_path: Path) -> None:
    """A third party's model.onnx records no weights sha256 zoo could compare: only a zoo run's exports are checked."""
    from zoo.errors import ZooError
    from zoo.sharing import hub

    repo = tmp_path / "repo"
    repo.mkdir()
    save_file({"w": torch.zeros(1)}, str(repo / "model.safetensors"))
    (repo / "model.onnx").write_bytes(b"")  # an ONNX model without zoo's metadata
    (repo / "config.json").write_text('{"architecture": "resnet18"}')
    hub._check_exports(repo, "hf-hub:someorg/model")
    (repo / "config.json").write_text('{"architecture": "mnist_cnn", "zoo": {}}')
    with pytest.raises(ZooError, match="records no weights sha256"):
        hub._check_exports(repo, "hf-hub:someorg/model")
