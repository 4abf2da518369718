"""A small Hugging Face Hub-compatible HTTP server for offline tests.

    python tests/hub_server.py --port PORT --root DIR [--token T ...] [--upload-delay S] [--port-file F] [--xet]

It implements the endpoints that huggingface_hub's own client calls (read from the installed client code):

    POST /api/repos/create                              create_repo (model, dataset, space)
    GET  /api/whoami-v2                                 whoami (bare repo names resolve to this user)
    POST /api/validate-yaml                             README.md metadata check done by create_commit
    GET  /api/{type}s/{id}[/revision/{rev}]             model_info / dataset_info / space_info (blobs=1 -> sizes, LFS)
    GET  /api/{type}s/{id}/tree/{rev}[/{path}]          list_repo_tree / list_repo_files
    POST /api/{type}s/{id}/paths-info/{rev}             get_paths_info
    GET  /api/{type}s/{id}/refs, /commits/{rev}         list_repo_refs / list_repo_commits
    POST /api/{type}s/{id}/branch/{branch}              create_branch
    POST /api/{type}s/{id}/preupload/{rev}              upload mode per file (regular / lfs) and remote oid
    POST /{prefix}{id}.git/info/lfs/objects/batch       Git LFS batch API, "basic" transfer only; with --xet it
                                                        answers "transfer": "xet" when the client offers xet
    GET  /api/{type}s/{id}/xet-write-token/{rev}        logged to xet_requests.log, then refused: this server
                                                        has no Xet storage (404; 501 with --xet)
    POST /api/{type}s/{id}/commit/{rev}[?create_pr=1]   ndjson commit, atomic, optional pull request refs/pr/N
    HEAD/GET /{prefix}{id}/resolve/{rev}/{path}         downloads: X-Repo-Commit, ETag; LFS files answer 302 to a
                                                        second "CDN" port with X-Linked-Etag / X-Linked-Size

Large-file bytes go to the CDN port (a different origin, like S3 on the real Hub): PUT to a signed upload URL,
streamed to a temporary file, hashed, and moved into the content-addressed store only when the sha256 and size
match. A commit only references objects that are complete, so a client killed mid-upload leaves no visible trace.

Storage under --root: objects/<sha256> (all file contents), commits/<oid>.json (full file table of each commit),
repos/<type>/<namespace>/<name>.json (visibility, refs). Refs move under one lock with an atomic rename.

Auth: with --token, a request carrying any other bearer token gets 401 "Invalid credentials in Authorization
header"; writes need a known token; private repos are invisible (404) without one. Without --token anything goes.
Only the standard library is needed (PyYAML, when importable, fills cardData in repo info). Tokens are never logged.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
USER = "shear-tester"
# Files the real Hub's default .gitattributes sends through LFS (plus anything binary or >= 10 MiB).
LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle",
    "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp",
]
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
CHUNK = 64 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An HTTP error answer with the headers huggingface_hub maps to its exception types."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


class Store:
    """Repos, commits and content-addressed objects on disk; all mutations under one lock."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("objects", "commits", "repos", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        # Leftovers of uploads cut off while a previous server ran are never valid objects.
        for stale in (root / "tmp").iterdir():
            stale.unlink(missing_ok=True)

    # ---- objects -----------------------------------------------------------------------------------------
    def object_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"invalid oid {sha256!r}")
        return self.root / "objects" / sha256

    def has_object(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha)
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="blob-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha

    # ---- repos -------------------------------------------------------------------------------------------
    def repo_path(self, repo_type: str, repo_id: str) -> Path:
        ns, name = repo_id.split("/", 1)
        return self.root / "repos" / repo_type / ns / f"{name}.json"

    def load_repo(self, repo_type: str, repo_id: str) -> dict | None:
        path = self.repo_path(repo_type, repo_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def save_repo(self, repo_type: str, repo_id: str, meta: dict) -> None:
        path = self.repo_path(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)  # atomic: readers see the old refs or the new ones

    # ---- commits -----------------------------------------------------------------------------------------
    def load_commit(self, oid: str) -> dict:
        return json.loads((self.root / "commits" / f"{oid}.json").read_text())

    def has_commit(self, oid: str) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{40}", oid)) and (self.root / "commits" / f"{oid}.json").is_file()

    def write_commit(self, parent: str | None, title: str, message: str, files: dict) -> str:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = {"parent": parent, "title": title, "message": message, "date": now, "files": files,
                "nonce": secrets.token_hex(8)}
        oid = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        path = self.root / "commits" / f"{oid}.json"
        tmp = path.with_suffix(f".tmp-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, path)
        return oid


def file_entry(store: Store, data: bytes | None, *, sha256: str | None = None, size: int | None = None,
               lfs: bool) -> dict:
    if data is not None:
        sha256, size = store.put_bytes(data), len(data)
    entry = {"sha256": sha256, "size": size, "lfs": lfs}
    if lfs:
        pointer = lfs_pointer(sha256, size)
        entry["git_oid"], entry["pointer_size"] = git_blob_sha1(pointer), len(pointer)
    else:
        entry["git_oid"] = git_blob_sha1(data if data is not None else store.object_path(sha256).read_bytes())
    return entry


class Hub:
    def __init__(self, root: Path, tokens: list[str], upload_delay: float, xet: bool = False):
        self.store = Store(root)
        self.root = root
        self.tokens = set(tokens)
        self.upload_delay = upload_delay
        self.xet = xet  # advertise Xet in the LFS batch answer (the storage itself is not implemented)
        self.secret = secrets.token_bytes(32)
        self.api_base = ""  # set once the ports are known
        self.cdn_base = ""

    # ---- auth --------------------------------------------------------------------------------------------
    def auth(self, headers) -> bool:
        """True when a known token was sent; raises 401 for an unknown one."""
        value = headers.get("Authorization") or headers.get("authorization")
        if not value:
            return not self.tokens  # open server: everyone may write
        token = value.split(" ", 1)[1].strip() if " " in value else value.strip()
        if self.tokens and token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def sign(self, *parts: str) -> str:
        return hmac.new(self.secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    # ---- repo helpers --------------------------------------------------------------------------------------
    def get_repo(self, repo_type: str, repo_id: str, authed: bool, write: bool = False) -> dict:
        if "/" not in repo_id:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        meta = self.store.load_repo(repo_type, repo_id)
        if meta is None or (meta["private"] and not authed):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        if write and not authed:
            raise HubError(401, "You must be authenticated with a write token to do this")
        return meta

    def resolve(self, meta: dict, revision: str) -> str:
        revision = unquote(revision)
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/"):]
        if revision in meta["refs"]:
            return meta["refs"][revision]
        if self.store.has_commit(revision):
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files_at(self, oid: str) -> dict:
        return self.store.load_commit(oid)["files"]

    def card_data(self, files: dict) -> dict | None:
        entry = files.get("README.md")
        if entry is None:
            return None
        text = self.store.object_path(entry["sha256"]).read_text(encoding="utf-8", errors="replace")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
        if not match:
            return None
        try:
            import yaml  # optional: only to mirror the Hub's cardData field
        except ImportError:
            return None
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None

    def tree_entry(self, path: str, entry: dict) -> dict:
        out = {"type": "file", "oid": entry["git_oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": entry["pointer_size"]}
        return out

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.api_base}/{URL_PREFIX[repo_type]}{repo_id}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub
    verbose = False
    server_version = "shear-hub-test-hub/0.1"

    # Never log headers (tokens); the path carries no secret (upload URLs carry a signature, not a token).
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        if self.verbose:
            sys.stderr.write("hub_server: %s\n" % (format % args))

    # ---- plumbing --------------------------------------------------------------------------------------------
    def read_body(self, sink=None) -> bytes:
        """Read a Content-Length or chunked body; stream into ``sink`` (write callable) when given."""
        self.body_read = True
        chunks: list[bytes] = []
        emit = sink or chunks.append
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(CHUNK, remaining))
                    if not data:
                        raise ConnectionError("client went away mid-body")
                    emit(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    raise ConnectionError("client went away mid-body")
                emit(data)
                remaining -= len(data)
        return b"".join(chunks)

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None,
             head_only: bool = False, length: int | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body and not head_only and self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, obj, status: int = 200, headers: dict | None = None, content_type="application/json"):
        self.send(status, json.dumps(obj).encode(), headers, content_type)

    def handle_any(self) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        # Split on the raw path: a revision like refs%2Fpr%2F1 is one segment.
        self.segments = [s for s in split.path.split("/") if s != ""]
        self.body_read = False
        try:
            self.route()
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            if not self.body_read and (self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")):
                try:
                    self.read_body()  # drain so the connection stays usable
                except Exception:  # noqa: BLE001
                    self.close_connection = True
            self.send_json({"error": err.message, **err.body}, err.status, headers)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = handle_any

    def qflag(self, name: str) -> bool:
        return any(v.lower() in ("1", "true") for v in self.query.get(name, []))

    # ---- routing ---------------------------------------------------------------------------------------------
    def route(self) -> None:
        seg, method, hub = self.segments, self.command, self.hub
        if seg[:2] == ["_lfs", "upload"] and method == "PUT":
            return self.lfs_put(unquote(seg[2]))
        if seg[:2] == ["_lfs", "objects"] and method in ("GET", "HEAD"):
            return self.lfs_get(unquote(seg[2]))
        authed = hub.auth(self.headers)
        if seg[:2] == ["_lfs", "verify"] and method == "POST":
            body = json.loads(self.read_body() or b"{}")
            if not hub.store.has_object(body.get("oid", "")):
                raise HubError(404, "object not uploaded")
            return self.send_json({"ok": True})
        if seg == ["api", "whoami-v2"]:
            if not authed or not self.headers.get("Authorization"):
                raise HubError(401, "Invalid credentials in Authorization header")
            return self.send_json({"type": "user", "name": USER, "auth": {"type": "access_token",
                                   "accessToken": {"role": "write"}}, "orgs": []})
        if seg == ["api", "agent-harnesses"]:  # client-side agent detection registry: empty
            return self.send_json({"standardEnvVars": [], "harnesses": {}})
        if seg == ["api", "validate-yaml"] and method == "POST":
            self.read_body()
            return self.send_json({"warnings": []})
        if seg == ["api", "repos", "create"] and method == "POST":
            return self.create_repo(json.loads(self.read_body() or b"{}"), authed)
        if len(seg) >= 4 and seg[0] == "api" and seg[1] in REPO_TYPES:
            repo_type, repo_id, rest = REPO_TYPES[seg[1]], f"{unquote(seg[2])}/{unquote(seg[3])}", seg[4:]
            return self.repo_api(repo_type, repo_id, rest, authed)
        # /{prefix}{ns}/{name}.git/info/lfs/objects/batch and /{prefix}{ns}/{name}/resolve/{rev}/{path}
        repo_type = "model"
        if seg and seg[0] in REPO_TYPES and seg[0] != "models":
            repo_type, seg = REPO_TYPES[seg[0]], seg[1:]
        if len(seg) >= 6 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
            return self.lfs_batch(repo_type, f"{unquote(seg[0])}/{unquote(seg[1])[:-4]}", authed)
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            path = "/".join(unquote(s) for s in seg[4:])
            return self.resolve_file(repo_type, f"{unquote(seg[0])}/{unquote(seg[1])}", seg[3], path, authed)
        raise HubError(404, f"no route for {method} {urlsplit(self.path).path}")

    # ---- endpoints -------------------------------------------------------------------------------------------
    def create_repo(self, body: dict, authed: bool) -> None:
        if not authed:
            raise HubError(401, "You must be authenticated with a write token to create a repo")
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"invalid repo type {repo_type}")
        name, org = body.get("name"), body.get("organization") or USER
        if not name or not re.fullmatch(r"[\w.-]+", name) or not re.fullmatch(r"[\w.-]+", org):
            raise HubError(400, f"invalid repo name {org}/{name}")
        repo_id = f"{org}/{name}"
        store = self.hub.store
        with store.lock:
            if store.load_repo(repo_type, repo_id) is not None:
                # Like the Hub: 409 still carries the URL (create_repo(exist_ok=True) reads it).
                raise HubError(409, "You already created this repo", body={"url": self.hub.repo_url(repo_type, repo_id)})
            files = {".gitattributes": file_entry(store, GITATTRIBUTES, lfs=False)}
            oid = store.write_commit(None, "initial commit", "", files)
            private = body.get("private") or body.get("visibility") == "private"
            meta = {"private": bool(private), "sdk": body.get("sdk"), "refs": {"main": oid}, "next_pr": 1}
            store.save_repo(repo_type, repo_id, meta)
        self.send_json({"url": self.hub.repo_url(repo_type, repo_id), "name": repo_id, "id": secrets.token_hex(12)})

    def repo_api(self, repo_type: str, repo_id: str, rest: list[str], authed: bool) -> None:
        hub, method = self.hub, self.command
        write = method == "POST" and rest[:1] in (["preupload"], ["commit"], ["branch"])
        meta = hub.get_repo(repo_type, repo_id, authed, write=write)
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            return self.repo_info(repo_type, repo_id, meta, rest[1] if rest else "main")
        kind = rest[0]
        if kind == "tree" and len(rest) >= 2:
            return self.tree(meta, rest[1], "/".join(unquote(s) for s in rest[2:]))
        if kind == "paths-info" and len(rest) == 2 and method == "POST":
            return self.paths_info(meta, rest[1])
        if kind == "refs":
            return self.refs(meta)
        if kind == "commits" and len(rest) == 2:
            return self.commits(meta, rest[1])
        if kind == "branch" and len(rest) == 2 and method == "POST":
            return self.create_branch(repo_type, repo_id, unquote(rest[1]))
        if kind == "preupload" and len(rest) == 2 and method == "POST":
            return self.preupload(meta, rest[1])
        if kind == "commit" and len(rest) == 2 and method == "POST":
            return self.commit(repo_type, repo_id, rest[1])
        if kind.startswith("xet-") and kind.endswith("-token"):
            with hub.store.lock, (hub.root / "xet_requests.log").open("a") as log:
                log.write(f"{method} {urlsplit(self.path).path}\n")
            raise HubError(501 if hub.xet else 404, "this test server has no Xet storage")
        raise HubError(404, f"no route for {method} {urlsplit(self.path).path}")

    def repo_info(self, repo_type: str, repo_id: str, meta: dict, revision: str) -> None:
        hub = self.hub
        oid = hub.resolve(meta, revision)
        commit = hub.store.load_commit(oid)
        files = commit["files"]
        blobs = self.qflag("blobs")
        siblings = []
        for path in sorted(files):
            sib = {"rfilename": path}
            if blobs:
                e = files[path]
                sib.update(size=e["size"], blobId=e["git_oid"])
                if e["lfs"]:
                    sib["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
            siblings.append(sib)
        card = hub.card_data(files) or {}
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
                "sha": oid, "lastModified": commit["date"], "createdAt": commit["date"], "private": meta["private"],
                "disabled": False, "gated": False, "siblings": siblings, "cardData": card,
                "tags": list(card.get("tags") or []) if isinstance(card.get("tags"), list) else []}
        if repo_type == "model":
            info.update(modelId=repo_id, library_name=card.get("library_name"), pipeline_tag=card.get("pipeline_tag"),
                        downloads=0, likes=0)
        elif repo_type == "space":
            info.update(sdk=meta.get("sdk"), subdomain=repo_id.replace("/", "-").lower(), likes=0)
        else:
            info.update(downloads=0, likes=0)
        self.send_json(info)

    def tree(self, meta: dict, revision: str, prefix: str) -> None:
        oid = self.hub.resolve(meta, revision)
        files = self.hub.files_at(oid)
        recursive = self.qflag("recursive")
        base = prefix.strip("/")
        under = {p: e for p, e in files.items() if not base or p.startswith(base + "/")}
        if base and not under:
            raise HubError(404, f"{base} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": oid})
        out, folders = [], set()
        for path in sorted(under):
            rel = path[len(base) + 1:] if base else path
            parts = rel.split("/")
            for depth in range(1, len(parts)):  # intermediate folders
                folder = "/".join(([base] if base else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    out.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0,
                                "path": folder})
            if recursive or len(parts) == 1:
                out.append(self.hub.tree_entry(path, under[path]))
        self.send_json(out)

    def paths_info(self, meta: dict, revision: str) -> None:
        oid = self.hub.resolve(meta, revision)
        files = self.hub.files_at(oid)
        body = self.read_body().decode()
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self.hub.tree_entry(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0,
                            "path": path})
        self.send_json(out)

    def refs(self, meta: dict) -> None:
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                    for n, o in meta["refs"].items() if not n.startswith("refs/")]
        prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in meta["refs"].items() if n.startswith("refs/pr/")]
        self.send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def commits(self, meta: dict, revision: str) -> None:
        oid, out = self.hub.resolve(meta, revision), []
        while oid:
            c = self.hub.store.load_commit(oid)
            out.append({"id": oid, "title": c["title"], "message": c["message"], "date": c["date"],
                        "authors": [{"user": USER}]})
            oid = c["parent"]
        self.send_json(out)

    def create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        body = json.loads(self.read_body() or b"{}")
        store = self.hub.store
        with store.lock:
            meta = store.load_repo(repo_type, repo_id)
            if branch in meta["refs"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            if not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", branch) or branch.startswith("refs"):
                raise HubError(400, f"invalid branch name {branch}")
            meta["refs"][branch] = self.hub.resolve(meta, body.get("startingPoint") or "main")
            store.save_repo(repo_type, repo_id, meta)
        self.send_json({})

    def preupload(self, meta: dict, revision: str) -> None:
        body = json.loads(self.read_body() or b"{}")
        try:
            files = self.hub.files_at(self.hub.resolve(meta, revision))
        except HubError:
            files = {}  # a new branch / PR target: nothing there yet
        out = []
        for f in body.get("files", []):
            path, size = f["path"], int(f.get("size", 0))
            sample = base64.b64decode(f.get("sample", ""))
            name = path.rsplit("/", 1)[-1]
            lfs = (any(fnmatch.fnmatch(name, pat) for pat in LFS_PATTERNS) or size >= LFS_SIZE_THRESHOLD
                   or b"\0" in sample)
            entry = files.get(path)
            # The client compares this oid with its own: sha256 for LFS files, git blob sha1 for regular ones.
            remote_oid = None if entry is None else (entry["sha256"] if entry["lfs"] else entry["git_oid"])
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": remote_oid})
        self.send_json({"files": out, "commitOid": None})

    def lfs_batch(self, repo_type: str, repo_id: str, authed: bool) -> None:
        body = json.loads(self.read_body() or b"{}")
        operation = body.get("operation")
        self.hub.get_repo(repo_type, repo_id, authed, write=operation == "upload")
        transfers = body.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(422, "only the basic LFS transfer is supported by this server")
        if self.hub.xet and operation == "upload" and "xet" in transfers:
            objects = [{"oid": o["oid"], "size": int(o["size"])} for o in body.get("objects", [])]
            return self.send_json({"transfer": "xet", "objects": objects, "hash_algo": "sha256"},
                                  content_type="application/vnd.git-lfs+json")
        out, expires = [], str(int(time.time()) + 3600)
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item = {"oid": oid, "size": size, "authenticated": True}
            if operation == "upload" and not self.hub.store.has_object(oid):
                sig = self.hub.sign("put", oid, str(size), expires)
                item["actions"] = {
                    "upload": {"href": f"{self.hub.cdn_base}/_lfs/upload/{oid}?size={size}&expires={expires}"
                                       f"&sig={sig}", "expires_in": 3600},
                    "verify": {"href": f"{self.hub.api_base}/_lfs/verify/{oid}"},
                }
            elif operation == "download":
                if not self.hub.store.has_object(oid):
                    item["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    sig = self.hub.sign("get", oid, expires)
                    item["actions"] = {"download": {
                        "href": f"{self.hub.cdn_base}/_lfs/objects/{oid}?expires={expires}&sig={sig}"}}
            out.append(item)
        self.send_json({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                       content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str) -> None:
        q = {k: v[0] for k, v in self.query.items()}
        size, expires = q.get("size", ""), q.get("expires", "0")
        if not hmac.compare_digest(q.get("sig", ""), self.hub.sign("put", oid, size, expires)) or \
                int(expires) < time.time():
            raise HubError(403, "bad or expired upload signature")
        store = self.hub.store
        target = store.object_path(oid)
        fd, tmp = tempfile.mkstemp(dir=store.root / "tmp", prefix=f"upload-{oid[:12]}-", suffix=".part")
        digest, written = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                def sink(data: bytes) -> None:
                    nonlocal written
                    digest.update(data)
                    f.write(data)
                    f.flush()
                    written += len(data)
                    if self.hub.upload_delay:
                        time.sleep(self.hub.upload_delay)  # lets tests interrupt a transfer midway

                self.read_body(sink)
            if digest.hexdigest() != oid or written != int(size):
                raise HubError(400, f"uploaded content does not match oid {oid} / size {size}")
            os.replace(tmp, target)  # only complete, verified objects ever appear in objects/
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.send(200, b"", {"ETag": f'"{oid}"'})

    def lfs_get(self, oid: str) -> None:
        q = {k: v[0] for k, v in self.query.items()}
        if not hmac.compare_digest(q.get("sig", ""), self.hub.sign("get", oid, q.get("expires", "0"))):
            raise HubError(403, "bad download signature")
        path = self.hub.store.object_path(oid)
        if not path.is_file():
            raise HubError(404, "no such object")
        self.send_file(path, {"ETag": f'"{oid}"'})

    def send_file(self, path: Path, headers: dict) -> None:
        size = path.stat().st_size
        self.send(200, b"", headers, "application/octet-stream", head_only=True, length=size)
        if self.command == "GET":
            with path.open("rb") as f:
                while data := f.read(CHUNK):
                    self.wfile.write(data)

    def resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str, authed: bool) -> None:
        hub = self.hub
        meta = hub.get_repo(repo_type, repo_id, authed)
        oid = hub.resolve(meta, revision)
        files = hub.files_at(oid)
        entry = files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "none"}
        if entry["lfs"]:
            expires = str(int(time.time()) + 3600)
            sig = hub.sign("get", entry["sha256"], expires)
            headers.update({
                "ETag": f'"{entry["git_oid"]}"',
                "X-Linked-Etag": f'"{entry["sha256"]}"',
                "X-Linked-Size": entry["size"],
                "Location": f"{hub.cdn_base}/_lfs/objects/{entry['sha256']}?expires={expires}&sig={sig}",
            })
            return self.send(302, b"", headers)
        headers["ETag"] = f'"{entry["git_oid"]}"'
        self.send_file(hub.store.object_path(entry["sha256"]), headers)

    def commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub, store = self.hub, self.hub.store
        lines = [json.loads(line) for line in self.read_body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = self.qflag("create_pr")
        number = 0
        # Store new regular-file contents before taking the lock (content-addressed, harmless if unused).
        staged: list[tuple[str, str, dict | None]] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "").strip("/")
            if not path or ".." in path.split("/") or path.startswith(".git/"):
                raise HubError(400, f"invalid path {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "only base64 file content is supported")
                staged.append(("add", path, file_entry(store, base64.b64decode(value["content"]), lfs=False)))
            elif key == "lfsFile":
                oid = value.get("oid", "")
                if not store.has_object(oid):
                    raise HubError(422, f"LFS object {oid} for {path} was never uploaded; upload it first")
                size = store.object_path(oid).stat().st_size
                if value.get("size") is not None and int(value["size"]) != size:
                    raise HubError(422, f"size mismatch for {path}")
                staged.append(("add", path, file_entry(store, None, sha256=oid, size=size, lfs=True)))
            elif key == "deletedFile":
                staged.append(("delete", path, None))
            elif key == "deletedFolder":
                staged.append(("delete_folder", path, None))
            else:
                raise HubError(400, f"unsupported commit operation {key}")
        with store.lock:  # the whole ref update is one atomic step
            meta = store.load_repo(repo_type, repo_id)
            base_oid = hub.resolve(meta, revision)
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != base_oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(hub.files_at(base_oid))
            for op, path, entry in staged:
                if op == "add":
                    files[path] = entry
                elif op == "delete":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                else:
                    for p in [p for p in files if p.startswith(path + "/")]:
                        del files[p]
            oid = store.write_commit(base_oid, header.get("summary") or "update", header.get("description") or "",
                                     files)
            if create_pr:
                number = meta["next_pr"]
                meta["next_pr"] = number + 1
                ref = f"refs/pr/{number}"
            else:
                ref = unquote(revision)
                if ref not in meta["refs"]:
                    raise HubError(400, f"cannot commit to {ref}: not a branch")
            meta["refs"][ref] = oid
            store.save_repo(repo_type, repo_id, meta)
        url = hub.repo_url(repo_type, repo_id)
        answer = {"success": True, "commitOid": oid, "commitUrl": f"{url}/commit/{oid}",
                  "commitMessage": header.get("summary"), "hookOutput": "",
                  "pullRequestUrl": f"{url}/discussions/{number}" if create_pr else None}
        self.send_json(answer)


def serve(port: int, root: Path, tokens: list[str], upload_delay: float = 0.0, cdn_port: int = 0,
          host: str = "127.0.0.1", verbose: bool = False, xet: bool = False):
    """Start the API server and its "CDN" twin in threads; returns (api_server, cdn_server)."""
    hub = Hub(root, tokens, upload_delay, xet)
    handler = type("BoundHandler", (Handler,), {"hub": hub, "verbose": verbose})
    api = ThreadingHTTPServer((host, port), handler)
    cdn = ThreadingHTTPServer((host, cdn_port), handler)
    api.daemon_threads = cdn.daemon_threads = True
    hub.api_base = f"http://{host}:{api.server_address[1]}"
    hub.cdn_base = f"http://{host}:{cdn.server_address[1]}"
    for server in (api, cdn):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return api, cdn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="API port (0 = pick a free one)")
    p.add_argument("--root", type=Path, required=True, help="folder holding repos, commits and objects")
    p.add_argument("--token", action="append", default=[], help="accepted bearer token (repeatable)")
    p.add_argument("--cdn-port", type=int, default=0, help="port of the large-file host (0 = pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--upload-delay", type=float, default=0.0, help="seconds to sleep per 64 KiB of LFS upload")
    p.add_argument("--port-file", type=Path, help="write the API port here once listening (for port 0)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--xet", action="store_true", help="answer LFS batch requests that offer xet with \"transfer\": "
                   "\"xet\", like the Hub (uploads then fail: there is no Xet storage here)")
    args = p.parse_args(argv)
    api, _cdn = serve(args.port, args.root, args.token, args.upload_delay, args.cdn_port, args.host, args.verbose,
                      args.xet)
    port = api.server_address[1]
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, args.port_file)
    print(f"hub_server listening on http://{args.host}:{port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
