"""A small Hugging Face Hub on 127.0.0.1, speaking the protocol the real huggingface_hub client uses.

Enough of it for zoo's push and pull: repo creation, YAML validation, preupload, git-LFS batch
and upload, NDJSON commits, branches, repo info and tree, and HEAD/GET of resolved files with
the headers the client caches by (X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size).
Dataset repos too, as the ``datasets`` library reads them: repo info, a tree listed one folder at
a time (directories included, as the Hub lists without ``recursive``), and files through
``resolve`` (byte ranges too, as a stream reads them); tests lay them out with ``FakeHub.add_dataset``,
and a private one answers only a token.
Every request body is read, whatever the answer, so that the client never sees a reset.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".bin")
DATASETS = "datasets/"  # the key prefix of dataset repos in HubState.repos: a model and a dataset may share an id


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    private: bool = False  # answered as not found without a token, as the Hub does

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    authorizations: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    commit_count: int = 0
    garble: set[str] = field(default_factory=set)  # file names a commit stores altered: a Hub serving other bytes

    def new_commit(self, repo: Repo, files: dict[str, Blob], branch: str) -> str:
        self.commit_count += 1
        sha = hashlib.sha1(f"commit {self.commit_count}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha


class FakeHub:
    """``with FakeHub() as hub:`` serves on ``hub.url`` until the block ends."""

    def __init__(self) -> None:
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.url = self.url  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_dataset(self, repo_id: str, files: dict[str, bytes], branch: str = "main", private: bool = False) -> str:
        """Commit ``files`` (path: bytes) to dataset repo ``repo_id`` on ``branch``, replacing what it held; the commit."""
        repo = self.state.repos.setdefault(DATASETS + repo_id, Repo())
        repo.private = repo.private or private
        blobs = {path: Blob(data, path.endswith(LFS_SUFFIXES + (".parquet", ".arrow"))) for path, data in files.items()}
        return self.state.new_commit(repo, blobs, branch)

    def file(self, repo_id: str, revision: str, path: str) -> Blob:
        repo = self.state.repos[repo_id]
        return repo.commits[repo.resolve(revision)][path]


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
            pass

        @property
        def base(self) -> str:
            return self.server.url  # type: ignore[attr-defined]

        def body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def reply(
            self, status: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
        ) -> None:
            data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def not_found(self, code: str, message: str) -> None:
            self.reply(404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def do_request(self) -> None:
            body = self.body() if self.command in ("POST", "PUT") else b""
            state.requests.append(f"{self.command} {self.path}")
            if self.headers.get("Authorization"):
                state.authorizations.append(self.headers["Authorization"])
            path = urlparse(self.path).path
            for methods, pattern, handle in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and self.command in methods:
                    return handle(self, body, *match.groups())
            self.not_found("EntryNotFound", f"no route for {self.command} {path}")

        do_GET = do_HEAD = do_POST = do_PUT = do_request

        def create_repo(self, body: bytes) -> None:
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            url = f"{self.base}/{repo_id}"
            if repo_id in state.repos:
                return self.reply(409, {"error": "You already created this model repo", "url": url})
            repo = state.repos[repo_id] = Repo()
            state.new_commit(
                repo, {".gitattributes": Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", False)}, "main"
            )
            self.reply(200, {"url": url, "name": repo_id})

        def validate_yaml(self, body: bytes) -> None:
            content = json.loads(body)["content"]  # the whole README.md: its front matter is checked
            try:
                data = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
                for entry in data.get("model-index", []):
                    for result in entry["results"]:
                        assert result["task"]["type"] and result["metrics"]
            except Exception as exc:  # anything wrong is a validation error for the client
                return self.reply(400, {"error": f"Invalid metadata in README.md: {exc}"})
            self.reply(200, {"errors": [], "warnings": []})

        def repo(self, repo_id: str) -> Repo | None:
            repo = state.repos.get(repo_id)
            if repo is not None and repo.private and not self.headers.get("Authorization"):
                repo = None
            if repo is None:
                self.reply(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return repo

        def commit_of(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
            """The repo and the commit ``revision`` names; None once the error is answered."""
            repo = self.repo(repo_id)
            if repo is None:
                return None
            sha = repo.resolve(revision)
            if sha is None:
                self.not_found("RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo, sha

        def preupload(self, body: bytes, repo_id: str, revision: str) -> None:
            if self.repo(repo_id) is None:
                return
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                    "shouldIgnore": False,
                }
                for f in json.loads(body)["files"]
            ]
            self.reply(200, {"files": files, "commitOid": None})

        def lfs_batch(self, body: bytes, repo_id: str) -> None:
            objects = []
            for item in json.loads(body)["objects"]:
                entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
                if item["oid"] not in state.lfs:
                    entry["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{item['oid']}"}}
                objects.append(entry)
            self.reply(200, {"transfer": "basic", "objects": objects})

        def lfs_upload(self, body: bytes, oid: str) -> None:
            if hashlib.sha256(body).hexdigest() != oid:
                return self.reply(400, {"error": "sha256 does not match the object id"})
            state.lfs[oid] = body
            self.reply(200, {})

        def commit(self, body: bytes, repo_id: str, revision: str) -> None:
            found = self.commit_of(repo_id, revision)
            if found is None:
                return
            repo, parent = found
            files = dict(repo.commits[parent])
            for line in filter(None, body.decode().splitlines()):
                operation = json.loads(line)
                value = operation["value"]
                if operation["key"] == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
                elif operation["key"] == "lfsFile":
                    if value["oid"] not in state.lfs:
                        return self.reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    files[value["path"]] = Blob(state.lfs[value["oid"]], True)
                elif operation["key"] == "deletedFile":
                    files.pop(value["path"], None)
            for name in state.garble & files.keys():
                files[name] = Blob(files[name].data + b" ", files[name].lfs)
            sha = state.new_commit(repo, files, unquote(revision))
            self.reply(200, {"commitUrl": f"{self.base}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

        def create_branch(self, body: bytes, repo_id: str, branch: str) -> None:
            repo = self.repo(repo_id)
            if repo is None:
                return
            if unquote(branch) in repo.branches:
                return self.reply(409, {"error": "Reference already exists"})
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[unquote(branch)] = repo.resolve(start)
            self.reply(200, {})

        def info(self, body: bytes, repo_id: str, revision: str = "main") -> None:
            found = self.commit_of(repo_id, revision)
            if found is None:
                return
            repo, sha = found
            siblings = [{"rfilename": name} for name in sorted(repo.commits[sha])]
            self.reply(
                200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "siblings": siblings, "tags": []}
            )

        def tree(self, body: bytes, repo_id: str, revision: str) -> None:
            found = self.commit_of(repo_id, revision)
            if found is None:
                return
            repo, sha = found
            entries = []
            for name, blob in sorted(repo.commits[sha].items()):
                entry = {"type": "file", "path": name, "size": len(blob.data), "oid": blob.git_oid}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
                entries.append(entry)
            self.reply(200, entries)

        def dataset_info(self, body: bytes, repo_id: str, revision: str = "main") -> None:
            self.info(body, DATASETS + repo_id, revision)

        def dataset_tree(self, body: bytes, repo_id: str, revision: str, folder: str | None = None) -> None:
            """One folder's entries, its subfolders as directories: the Hub's listing without ``recursive``."""
            found = self.commit_of(DATASETS + repo_id, revision)
            if found is None:
                return
            repo, sha = found
            prefix = f"{unquote(folder).strip('/')}/" if folder else ""
            entries: dict[str, dict[str, Any]] = {}
            for name, blob in sorted(repo.commits[sha].items()):
                if not name.startswith(prefix):
                    continue
                child, _, below = name[len(prefix) :].partition("/")
                path = prefix + child
                if below:
                    oid = hashlib.sha1(path.encode()).hexdigest()
                    entries.setdefault(path, {"type": "directory", "path": path, "oid": oid, "size": 0})
                else:
                    entries[path] = {"type": "file", "path": path, "size": len(blob.data), "oid": blob.git_oid}
                    if blob.lfs:
                        entries[path]["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            if folder and not entries:
                return self.not_found("EntryNotFound", f"{folder} does not exist at {revision}")
            self.reply(200, list(entries.values()))

        def dataset_resolve(self, body: bytes, repo_id: str, revision: str, name: str) -> None:
            self.resolve(body, DATASETS + repo_id, revision, name)

        def resolve(self, body: bytes, repo_id: str, revision: str, name: str) -> None:
            found = self.commit_of(repo_id, revision)
            if found is None:
                return
            repo, sha = found
            blob = repo.commits[sha].get(unquote(name))
            if blob is None:
                return self.not_found("EntryNotFound", f"{name} does not exist at {revision}")
            headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.git_oid}"'}
            if blob.lfs:
                headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))}
            wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if wanted and self.command == "GET":  # a streamed file is read in byte ranges (HfFileSystem)
                start, end = int(wanted[1]), min(int(wanted[2] or len(blob.data) - 1), len(blob.data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(blob.data)}"
                return self.reply(206, headers=headers, raw=blob.data[start : end + 1])
            self.reply(200, headers=headers, raw=blob.data)

    repo_id = r"([\w.-]+/[\w.-]+)"
    ROUTES = [
        (("POST",), r"/api/repos/create", Handler.create_repo),
        (("POST",), r"/api/validate-yaml", Handler.validate_yaml),
        (("POST",), rf"/api/models/{repo_id}/preupload/([^/]+)", Handler.preupload),
        (("POST",), rf"/{repo_id}\.git/info/lfs/objects/batch", Handler.lfs_batch),
        (("PUT",), r"/lfs-upload/([0-9a-f]{64})", Handler.lfs_upload),
        (("POST",), rf"/api/models/{repo_id}/commit/([^/]+)", Handler.commit),
        (("POST",), rf"/api/models/{repo_id}/branch/([^/]+)", Handler.create_branch),
        (("GET",), rf"/api/models/{repo_id}", Handler.info),
        (("GET",), rf"/api/models/{repo_id}/revision/([^/]+)", Handler.info),
        (("GET",), rf"/api/models/{repo_id}/tree/([^/]+)", Handler.tree),
        (("GET", "HEAD"), rf"/{repo_id}/resolve/([^/]+)/(.+)", Handler.resolve),
        (("GET",), rf"/api/datasets/{repo_id}", Handler.dataset_info),
        (("GET",), rf"/api/datasets/{repo_id}/revision/([^/]+)", Handler.dataset_info),
        (("GET",), rf"/api/datasets/{repo_id}/tree/([^/]+)", Handler.dataset_tree),
        (("GET",), rf"/api/datasets/{repo_id}/tree/([^/]+)/(.+)", Handler.dataset_tree),
        (("GET", "HEAD"), rf"/datasets/{repo_id}/resolve/([^/]+)/(.+)", Handler.dataset_resolve),
    ]
    return Handler
