"""A small Hugging Face Hub-compatible HTTP server for the tests, standard library only.

The real clients (huggingface_hub, datasets, transformers, peft) run unchanged against it once `HF_ENDPOINT`
points here and xet is off (`HF_HUB_DISABLE_XET=1`): uploads then go preupload -> LFS batch + PUT -> NDJSON
commit, and downloads go through `/resolve/` with the headers the clients check (`X-Repo-Commit`, `ETag`).

Storage: every file content lives once under `storage_dir/objects/{sha256}` (LFS uploads land there too); each
repo keeps its commits in memory, each commit mapping paths to those objects. Keeping every commit (not just the
head) lets clients read at a commit sha, as `datasets` and `snapshot_download` do. There is one branch, `main`.

Set `DTM_HUB_SERVER_DEBUG=1` to log every request (and server-side tracebacks) to stderr.
"""

import base64
import hashlib
import itertools
import json
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

USER = "tester"  # the namespace of repos created without an organization, and whoami's answer
DEBUG = bool(os.environ.get("DTM_HUB_SERVER_DEBUG"))

# The Hub stores these as LFS (its default .gitattributes); anything binary or over 10 MB goes to LFS as well.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".parquet", ".arrow", ".npy", ".npz",
                ".msgpack", ".pkl", ".pickle", ".zip", ".gz", ".tar", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


class HubError(Exception):
    """An error answer: `code` goes to X-Error-Code, which the clients map to their exception types."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.headers = {"X-Error-Code": code, **(headers or {})} if code else dict(headers or {})


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())  # the one format huggingface_hub parses


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    """One file of a commit. `git_oid` is what git stores: the content's blob id, or the LFS pointer's."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str  # "model" or "dataset"
    repo_id: str
    private: bool
    created_at: str = field(default_factory=now)
    commits: list[Commit] = field(default_factory=list)  # oldest first; the last one is `main`

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def commit(self, revision: str) -> Commit:
        """The commit a revision names: `main`, or the sha of any commit (clients pin reads to a sha)."""
        if revision == "main":
            return self.head
        for commit in self.commits:
            if commit.oid == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def url_path(self) -> str:
        """The repo's web path: models sit at the root, datasets under /datasets/."""
        return f"datasets/{self.repo_id}" if self.repo_type == "dataset" else self.repo_id


class HubServer:
    """The Hub on 127.0.0.1: `start()` it, point HF_ENDPOINT at `url`, inspect repos with the helpers below."""

    def __init__(self, storage_dir: str | os.PathLike):
        self.storage_dir = Path(storage_dir)
        self.objects_dir = self.storage_dir / "objects"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.url: str | None = None
        self._repos: dict[tuple[str, str], Repo] = {}
        # Writers take the lock; readers need not, as a commit is never changed once appended.
        self._lock = threading.Lock()
        self._counter = itertools.count()  # makes commit ids unique even for identical commits
        self._httpd: ThreadingHTTPServer | None = None
        self._faults: list[list] = []  # [method or None, compiled path pattern, status, answers left (None: all)]

    # ---- life cycle ----

    def start(self) -> str:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- test helpers ----

    def fail(self, path_regex: str, status: int = 500, times: int | None = None, method: str | None = None) -> None:
        """Answer `status` to requests whose path matches `path_regex` (and `method`, when given): the next `times`
        of them, or all until `heal()`. LFS uploads are `PUT /lfs-objects/{sha256}` (asked for even when the server
        has the object, while they are to fail), commits `POST /api/{models|datasets}/{repo}/commit/main`."""
        with self._lock:
            self._faults.append([method, re.compile(path_regex), status, times])

    def heal(self) -> None:
        """No more faults: every request is answered normally again."""
        with self._lock:
            self._faults.clear()

    def _fault(self, method: str, path: str, use: bool = True) -> int | None:
        """The status a request is to fail with (counted as one of its `times` when `use`), or None."""
        with self._lock:
            for fault in self._faults:
                wanted, pattern, status, left = fault
                if (wanted in (None, method)) and pattern.search(path) and left != 0:
                    if use:
                        fault[3] = None if left is None else left - 1
                    return status
        return None

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def repo_files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """Path -> content of every file at the repo's current revision."""
        with self._lock:
            files = dict(self.repo(repo_type, repo_id).head.files)
        return {path: self.read_object(blob.sha256) for path, blob in sorted(files.items())}

    # ---- storage ----

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound") from None

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo | None:
        """The new repo, with the Hub's initial commit of a .gitattributes; None when it already exists."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                return None
            repo = self._repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
            self._append_commit(repo, "initial commit", "", {".gitattributes": self.store(GITATTRIBUTES, lfs=False)})
            return repo

    def commit(self, repo: Repo, title: str, message: str, changes, parent: str | None) -> Commit:
        """Apply `changes(files)` (which edits a copy of the head's files) as a new commit on `main`."""
        with self._lock:
            if parent is not None and parent != repo.head.oid:
                # datasets' push_to_hub retries on 412 after re-reading the repo
                raise HubError(412, f"parent commit {parent} is not the head of main ({repo.head.oid})")
            files = dict(repo.head.files)
            changes(files)
            return self._append_commit(repo, title, message, files)

    def _append_commit(self, repo: Repo, title: str, message: str, files: dict[str, Blob]) -> Commit:
        seed = json.dumps([repo.repo_id, title, next(self._counter), sorted((p, b.sha256) for p, b in files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, message, now(), files)
        repo.commits.append(commit)
        return commit

    def store(self, data: bytes, lfs: bool) -> Blob:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.objects_dir / sha256
        if not path.exists():
            # write then rename, so a concurrent reader never sees half an object
            tmp = path.with_name(f"{sha256}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        oid = git_blob_oid(lfs_pointer(sha256, len(data)) if lfs else data)
        return Blob(sha256, len(data), lfs, oid)

    def lfs_blob(self, sha256: str, size: int | None) -> Blob:
        """The Blob of an object uploaded earlier through the LFS endpoints."""
        path = self.objects_dir / sha256
        if not path.is_file():
            raise HubError(422, f"LFS object {sha256} was never uploaded")
        actual = path.stat().st_size
        if size is not None and size != actual:
            raise HubError(422, f"LFS object {sha256} has {actual} bytes, not {size}")
        return Blob(sha256, actual, True, git_blob_oid(lfs_pointer(sha256, actual)))

    def has_object(self, sha256: str) -> bool:
        return (self.objects_dir / sha256).is_file()

    def read_object(self, sha256: str) -> bytes:
        return (self.objects_dir / sha256).read_bytes()


# ---- HTTP ----

REPO = r"(?P<repo>(?:[\w.-]+/)?[\w.-]+)"  # "ns/name"; a bare "name" is accepted so that it gets RepoNotFound
API = rf"/api/(?P<type>model|dataset)s/{REPO}"
GIT = rf"/(?:(?P<type>dataset)s/)?{REPO}"  # git-style URLs: models at the root, datasets under /datasets/

_ROUTES = [  # (methods, pattern matched against the still-%-encoded path, handler method)
    (("GET",), r"/api/whoami-v2", "whoami"),
    (("GET",), r"/api/agent-harnesses", "agent_harnesses"),
    (("POST",), r"/api/repos/create", "create_repo"),
    (("POST",), r"/api/validate-yaml", "validate_yaml"),
    (("GET",), rf"{API}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    (("GET",), rf"{API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    (("POST",), rf"{API}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    (("GET",), rf"{API}/commits/(?P<rev>[^/]+)", "commits"),
    (("GET",), rf"{API}/refs", "refs"),
    (("POST",), rf"{API}/preupload/(?P<rev>[^/]+)", "preupload"),
    (("POST",), rf"{API}/commit/(?P<rev>[^/]+)", "commit"),
    (("POST",), rf"{GIT}\.git/info/lfs/objects/batch", "lfs_batch"),
    (("PUT",), r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "lfs_put"),  # the href lfs_batch hands out
    (("GET", "HEAD"), rf"{GIT}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
ROUTES = [(methods, re.compile(pattern), name) for methods, pattern, name in _ROUTES]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server_version = "dtm-test-hub"

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _dispatch(self):
        raw_path, _, query = self.path.partition("?")
        self.query = {key: values[-1] for key, values in parse_qs(query).items()}
        self.body = self._read_body()  # always read it, so that the kept-alive connection stays in step
        try:
            if status := self.hub._fault(self.command, raw_path):
                raise HubError(status, f"the test Hub server was told to fail {self.command} {raw_path}")
            for methods, pattern, name in ROUTES:
                if self.command in methods and (match := pattern.fullmatch(raw_path)):
                    args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    return getattr(self, name)(**args)
            raise HubError(404, f"no route for {self.command} {raw_path} in the test Hub server")
        except HubError as err:
            self._send_json({"error": err.message, **err.extra}, err.status, err.headers)
        except Exception as err:  # a bug here: answer 500 with the cause rather than dropping the connection
            if DEBUG:
                traceback.print_exc()
            self._send_json({"error": f"test Hub server failed: {type(err).__name__}: {err}"}, 500)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format, *args):
        if DEBUG:
            sys.stderr.write(f"[hub] {format % args}\n")

    # ---- plumbing ----

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed uploads (file objects)
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, body: bytes, status: int = 200, headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj, status: int = 200, headers: dict | None = None, content_type="application/json"):
        self._send(json.dumps(obj).encode(), status, headers, content_type)

    def _json_body(self):
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"body is not JSON: {err}") from None

    def _flag(self, value) -> bool:
        return str(value).lower() in ("1", "true")

    def _repo(self, type: str | None, repo: str) -> Repo:
        return self.hub.repo(type or "model", repo)

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.hub.url}/{repo.url_path()}"

    # ---- account ----

    def whoami(self):
        token = {"displayName": "test token", "role": "write", "createdAt": now()}
        self._send_json({"type": "user", "id": "0" * 24, "name": USER, "fullname": "Test User", "orgs": [],
                         "auth": {"type": "access_token", "accessToken": token}})

    def agent_harnesses(self):
        # huggingface_hub fetches this registry to name AI agents in its user agent: an empty one detects none
        self._send_json({"standardEnvVars": [], "harnesses": {}})

    def validate_yaml(self):
        # create_commit asks this before committing a README.md, and raises ValueError on a 400
        try:
            yaml_header(self._json_body().get("content", ""))
        except ValueError as err:
            raise HubError(400, "Invalid metadata in README.md", errors=[{"message": str(err)}]) from None
        self._send_json({"errors": [], "warnings": []})

    # ---- repos ----

    def create_repo(self):
        body = self._json_body()
        repo_type = body.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HubError(400, f"the test Hub server has no {repo_type} repos")
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = self.hub.create_repo(repo_type, repo_id, private)
        if repo is None:  # the clients read the 409 as "exists" (create_repo(exist_ok=True) passes)
            url = self._repo_url(self.hub.repo(repo_type, repo_id))
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        self._send_json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def repo_info(self, type, repo, rev="main"):
        repo = self._repo(type, repo)
        commit = repo.commit(rev)
        siblings = [{"rfilename": path, "size": blob.size, "blobId": blob.git_oid, **self._lfs_info(blob, "sha256")}
                    for path, blob in sorted(commit.files.items())]
        readme = commit.files.get("README.md")
        self._send_json({
            "_id": commit.oid[:24], "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": repo.created_at, "lastModified": commit.date, "siblings": siblings,
            "usedStorage": sum(blob.size for blob in commit.files.values()),
            "cardData": self._card_data(readme),
        })

    def _card_data(self, readme: Blob | None) -> dict | None:
        try:
            return yaml_header(self.hub.read_object(readme.sha256).decode("utf-8", "replace")) if readme else None
        except ValueError:
            return None

    def refs(self, type, repo):
        head = self._repo(type, repo).head.oid
        main = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
        self._send_json({"branches": [main], "tags": [], "converts": [], "pullRequests": []})

    def commits(self, type, repo, rev):
        repo = self._repo(type, repo)
        history = repo.commits[: repo.commits.index(repo.commit(rev)) + 1]
        self._send_json([{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                          "authors": [{"user": USER}]} for c in reversed(history)])

    # ---- listing ----

    @staticmethod
    def _lfs_info(blob: Blob, oid_key: str) -> dict:
        """The `lfs` field of a listing entry; siblings name the hash `sha256`, tree entries `oid`."""
        if not blob.lfs:
            return {}
        pointer_size = len(lfs_pointer(blob.sha256, blob.size))
        return {"lfs": {oid_key: blob.sha256, "size": blob.size, "pointerSize": pointer_size}}

    def _entry(self, commit: Commit, path: str, expand: bool) -> dict:
        """A tree / paths-info entry: a file, or a directory (which git only has implicitly, via its files)."""
        if path in commit.files:
            blob = commit.files[path]
            entry = {"type": "file", "path": path, "size": blob.size, "oid": blob.git_oid,
                     **self._lfs_info(blob, "oid")}
        else:
            tree_oid = hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest()
            entry = {"type": "directory", "path": path, "size": 0, "oid": tree_oid}
        if expand:
            entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return entry

    @staticmethod
    def _folders(commit: Commit) -> set[str]:
        return {"/".join(parts[:i]) for parts in (p.split("/") for p in commit.files) for i in range(1, len(parts))}

    def tree(self, type, repo, rev, path=""):
        commit = self._repo(type, repo).commit(rev)
        path = path.strip("/")
        folders = self._folders(commit)
        if path and path not in folders:
            raise HubError(404, f"{path} is not a folder at {rev}", "EntryNotFound")
        prefix = f"{path}/" if path else ""
        recursive, expand = self._flag(self.query.get("recursive")), self._flag(self.query.get("expand"))
        names = sorted(p for p in folders | commit.files.keys()
                       if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]))
        entries = [self._entry(commit, name, expand) for name in names]
        # the Hub lists folders before files
        self._send_json(sorted(entries, key=lambda entry: entry["type"] == "file"))

    def paths_info(self, type, repo, rev):
        commit = self._repo(type, repo).commit(rev)
        form = parse_qs(self.body.decode())  # a form, not JSON: paths=a&paths=b&expand=false
        known = commit.files.keys() | self._folders(commit)
        expand = self._flag(form.get("expand", ["false"])[-1])
        self._send_json([self._entry(commit, p, expand) for p in form.get("paths", []) if p.strip("/") in known])

    # ---- uploads ----

    def preupload(self, type, repo, rev):
        commit = self._repo(type, repo).commit(rev)
        files = []
        for file in self._json_body().get("files", []):
            sample = base64.b64decode(file.get("sample", ""))
            lfs = file["size"] >= LFS_MIN_SIZE or b"\0" in sample or file["path"].endswith(LFS_SUFFIXES)
            existing = commit.files.get(file["path"])
            # The client skips a file whose oid equals its own hash: sha256 for LFS, the git blob id otherwise.
            oid = None if existing is None else existing.sha256 if existing.lfs else existing.git_oid
            files.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._send_json({"files": files, "commitOid": commit.oid})

    def lfs_batch(self, repo, type=None):
        self._repo(type, repo)  # RepoNotFound before anything else
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "the test Hub server's LFS endpoint only takes uploads")
        objects = []
        for obj in body.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            # No `actions` tells the client the object is already there; one whose upload is to fail is asked for
            if not self.hub.has_object(obj["oid"]) or self.hub._fault("PUT", f"/lfs-objects/{obj['oid']}", use=False):
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-objects/{obj['oid']}", "header": {}}}
            objects.append(answer)
        self._send_json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid):
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not hash to {oid}")
        self.hub.store(self.body, lfs=True)
        self._send(b"", content_type="text/plain")

    def commit(self, type, repo, rev):
        repo = self._repo(type, repo)
        if rev != "main":
            raise HubError(400, f"the test Hub server only commits to main, not {rev}")
        if self._flag(self.query.get("create_pr")):
            raise HubError(400, "the test Hub server has no pull requests")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        # Resolve every addition (and check LFS objects exist) before taking the repo lock.
        additions = {}
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                additions[value["path"]] = self.hub.store(base64.b64decode(value["content"]), lfs=False)
            elif line["key"] == "lfsFile":
                additions[value["path"]] = self.hub.lfs_blob(value["oid"], value.get("size"))
        deletions = [line for line in lines if line["key"] in ("deletedFile", "deletedFolder")]

        def apply(files: dict[str, Blob]) -> None:
            for line in deletions:
                path = line["value"]["path"].strip("/")
                doomed = [p for p in files if p == path or p.startswith(f"{path}/")]
                if not doomed:
                    raise HubError(404, f"cannot delete {path}: no such file or folder", "EntryNotFound")
                for p in doomed:
                    del files[p]
            files.update(additions)

        commit = self.hub.commit(repo, header.get("summary", ""), header.get("description", ""), apply,
                                 header.get("parentCommit"))
        self._send_json({"success": True, "commitOid": commit.oid, "commitMessage": commit.title, "hookOutput": "",
                         "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}", "pullRequestUrl": None})

    # ---- downloads ----

    def resolve(self, repo, rev, path, type=None):
        commit = self._repo(type, repo).commit(rev)
        blob = commit.files.get(path)
        if blob is None:
            # X-Repo-Commit lets hf_hub_download cache the file's absence for that commit
            raise HubError(404, f"{path} does not exist at {rev}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = self.hub.read_object(blob.sha256)
        # the ETag the Hub gives: the sha256 for LFS files, the git blob id for the rest
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.sha256 if blob.lfs else blob.git_oid}"',
                   "Accept-Ranges": "bytes"}
        start, end = self._range(len(data))
        if (start, end) != (0, len(data)):
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            return self._send(data[start:end], 206, headers, "application/octet-stream")
        self._send(data, 200, headers, "application/octet-stream")

    def _range(self, size: int) -> tuple[int, int]:
        """The [start, end) a `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` header asks for (whole file without one)."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if not match or match.groups() == ("", ""):
            return 0, size
        first, last = match.groups()
        if not first:  # bytes=-n: the last n bytes
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1, size) if last else size
        if start >= end:  # HfFileSystem reads until this 416 when it reads past the end
            raise HubError(416, f"range {self.headers['Range']} outside a {size}-byte file",
                           headers={"Content-Range": f"bytes */{size}"})
        return start, end


def yaml_header(readme: str) -> dict | None:
    """A README's YAML header, as the Hub's `cardData`; None without a header. ValueError when it is not a mapping.

    PyYAML is not standard library, but every Hugging Face client depends on it; without it headers go unread.
    """
    match = re.match(r"---\r?\n(.*?)\r?\n?---(?:\r?\n|$)", readme, re.S)
    if match is None:
        return None
    try:
        import yaml
    except ImportError:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML header: {err}") from None
    if not isinstance(data, dict | None):
        raise ValueError(f"the YAML header is a {type(data).__name__}, not a mapping")
    return data
