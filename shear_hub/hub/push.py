"""Push a model folder to the Hugging Face Hub in one commit, then check the remote against the local folder.

Why one ``create_commit`` and not ``upload_folder``: with ``hf_xet`` installed, ``upload_folder`` may split a
folder into several commits; a single commit is atomic on the Hub, so an interrupted push never leaves a
half-updated model visible, and re-running it uploads only what is missing (already stored large files are
skipped by the server, unchanged files are dropped from the commit, an unchanged folder makes no commit).

The token comes from ``token=``, ``HF_TOKEN`` or the huggingface_hub login, and is never printed or logged:
errors are rebuilt from status codes, never from request headers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.utils.sha import git_hash, sha_fileobj

from ..errors import ShearHubError
from .ids import is_hub_id

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Never uploaded: VCS / caches / the hidden temporaries of shear_hub.io.atomic_output_dir.
_SKIP_DIRS = {".git", ".cache", ".huggingface", "__pycache__", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class LocalFile:
    path: str  # posix path inside the repo
    abspath: Path
    size: int


def local_files(folder: Path) -> list[LocalFile]:
    """Files the push mirrors: everything except VCS/cache folders and hidden temporaries."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in _SKIP_DIRS or part.endswith((".tmp", ".part")) for part in rel.parts):
            continue
        if any(part.startswith(".") and ".tmp-" in part for part in rel.parts):
            continue
        if path.is_file():
            out.append(LocalFile(rel.as_posix(), path, path.stat().st_size))
    return out


def _sha256(path: Path) -> str:
    """The sha256 the Hub lists for an LFS / Xet file (read in 1 MiB chunks)."""
    with path.open("rb") as f:
        return sha_fileobj(f).hex()


def _git_blob_sha1(path: Path) -> str:
    """The git blob id the Hub lists for a regular (small, non-LFS) file."""
    return git_hash(path.read_bytes())


def _http_error(err: Exception, what: str, endpoint: str) -> ShearHubError:
    """One-line error with the fix; built from the status code so no header (token) can leak."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, RevisionNotFoundError):
        return ShearHubError(f"{what}: revision not found on {endpoint}; check --revision")
    if isinstance(err, RepositoryNotFoundError):
        return ShearHubError(
            f"{what}: repository not found or not accessible on {endpoint}; check REPO_ID/--repo-type and that "
            "the token can write to that namespace"
        )
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status == 401:
        return ShearHubError(
            f"{what}: the Hub rejected the token (401); pass a valid write token with --token, set HF_TOKEN, "
            "or run `hf auth login`"
        )
    if isinstance(err, HfHubHTTPError) and status == 403:
        return ShearHubError(f"{what}: permission denied (403); use a token with write access to this repo")
    if isinstance(err, HfHubHTTPError):
        return ShearHubError(f"{what}: the Hub answered HTTP {status}; re-run the push (it resumes) or check {endpoint}")
    return ShearHubError(f"{what}: cannot reach {endpoint} ({type(err).__name__}); check --endpoint and the network")


def _space_sdk(folder: Path) -> str:
    """A Space needs an SDK at creation: read it from the README front matter, default gradio."""
    readme = folder / "README.md"
    if readme.is_file():
        match = re.search(r"^sdk:\s*['\"]?([\w-]+)", readme.read_text(encoding="utf-8", errors="replace"), re.M)
        if match:
            return match.group(1)
    return "gradio"


def repo_url(endpoint: str, repo_type: str, repo_id: str, revision: str | None = None) -> str:
    url = f"{endpoint.rstrip('/')}/{URL_PREFIX[repo_type]}{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def verify_remote(api, folder: Path, repo_id: str, *, repo_type: str, revision: str,
                  files: list[LocalFile] | None = None) -> int:
    """Compare the remote tree at ``revision`` with ``folder``: same paths, sha256 for LFS files, git blob
    sha1 for regular ones. Raises ShearHubError on any difference; returns the number of files checked."""
    from huggingface_hub.hf_api import RepoFile

    files = local_files(folder) if files is None else files
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=repo_type)
        if isinstance(entry, RepoFile)
    }
    local = {f.path: f for f in files}
    problems = []
    missing = sorted(set(local) - set(remote))
    extra = sorted(set(remote) - set(local) - {".gitattributes"})  # the Hub adds .gitattributes itself
    if missing:
        problems.append(f"missing remotely: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"only remote: {', '.join(extra[:5])}")
    for path in sorted(set(local) & set(remote)):
        lf, rf = local[path], remote[path]
        if rf.lfs is not None:
            same = rf.lfs.size == lf.size and rf.lfs.sha256 == _sha256(lf.abspath)
        else:
            same = rf.size == lf.size and rf.blob_id == _git_blob_sha1(lf.abspath)
        if not same:
            problems.append(f"content differs: {path}")
    if problems:
        raise ShearHubError(
            f"remote {repo_type} {repo_id}@{revision[:12]} does not match the local folder ({'; '.join(problems[:4])}); "
            "re-run the push to repair it"
        )
    return len(local)


def server_offers_xet(repo_id: str, *, repo_type: str, revision: str, endpoint: str, token: str | None,
                      sample: LocalFile) -> bool:
    """Ask the server, not the client, whether large files go to Xet storage.

    huggingface_hub >= 1 uploads through Xet whenever ``hf_xet`` is installed, which fails on a Hub-compatible
    server without Xet storage. The Git LFS batch API lets the client list the transfers it speaks and the server
    name the one it picked: offered ``basic``/``multipart``/``xet``, the Hub answers ``xet``; a server without Xet
    answers ``basic`` (or ignores the unknown name). The probe sends one small local file's oid, which uploads
    nothing. An error answer counts as "no Xet": the LFS upload that follows reports the real problem.
    """
    from urllib.parse import quote

    from huggingface_hub.lfs import UploadInfo, post_lfs_batch_info

    try:
        answer = post_lfs_batch_info(upload_infos=[UploadInfo.from_bytes(sample.abspath.read_bytes())], token=token,
                                     repo_type=repo_type, repo_id=repo_id, revision=quote(revision, safe=""),
                                     endpoint=endpoint, transfers=["basic", "multipart", "xet"])
    except Exception:  # noqa: BLE001 - any failed probe means: do not pick Xet
        return False
    return isinstance(answer, tuple) and len(answer) >= 3 and answer[2] == "xet"


def _client_wants_xet(constants) -> bool:
    """What huggingface_hub would do on its own: Xet when hf_xet is importable and HF_HUB_DISABLE_XET is unset."""
    import importlib.util

    return not getattr(constants, "HF_HUB_DISABLE_XET", False) and importlib.util.find_spec("hf_xet") is not None


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> str:
    """Mirror ``folder`` into ``repo_id`` in one commit, verify it, and return the URL of the result.

    Creates the repo (and the branch ``revision``) when needed. Remote files that are not in the folder are
    deleted in the same commit (except ``.gitattributes``), so the remote equals the folder afterwards.
    With ``create_pr`` the commit opens a pull request against ``revision`` (default main) and the PR URL is
    returned.
    """
    from huggingface_hub import HfApi, constants

    folder = Path(folder).expanduser()
    files = _files_to_push(folder, repo_type)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    transport_errors = _transport_errors()
    repo_id = _full_repo_id(api, repo_id, endpoint, transport_errors)
    base = revision or constants.DEFAULT_REVISION
    remote_paths = _prepare_repo(api, folder, repo_id, repo_type=repo_type, private=private, base=base,
                                 endpoint=endpoint, transport_errors=transport_errors)
    operations = _commit_operations(files, remote_paths)
    message = commit_message or f"Upload {folder.name} with shear-hub"
    info = _create_commit(api, repo_id, operations, files, message=message, repo_type=repo_type, base=base,
                          create_pr=create_pr, endpoint=endpoint, token=token, transport_errors=transport_errors)
    try:
        verify_remote(api, folder, repo_id, repo_type=repo_type, revision=info.oid, files=files)
    except transport_errors as err:
        raise _http_error(err, f"cannot verify {repo_id} after upload", endpoint) from None
    if create_pr and info.pr_url:
        return info.pr_url
    return repo_url(endpoint, repo_type, repo_id, revision)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The errors a Hub call raises for network / HTTP trouble (mapped to one-line messages by ``_http_error``)."""
    try:
        import httpx2 as httpx  # the HTTP client of huggingface_hub >= 2
    except ImportError:  # huggingface_hub 1.x uses httpx
        import httpx
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx.HTTPError, OSError)


def _files_to_push(folder: Path, repo_type: str) -> list[LocalFile]:
    """The folder's files, after checking that it is a folder with files and that the repo type is known."""
    if not folder.is_dir():
        raise ShearHubError(f"{folder} is not a folder; give the path of a model folder to push")
    if repo_type not in REPO_TYPES:
        raise ShearHubError(f"unknown repo type {repo_type!r}; use one of {', '.join(REPO_TYPES)}")
    files = local_files(folder)
    if not files:
        raise ShearHubError(f"{folder} has no files to push; point at a model folder")
    return files


def _full_repo_id(api, repo_id: str, endpoint: str, transport_errors: tuple) -> str:
    """``namespace/name``: a bare name goes to the token owner's namespace (as the Hub does); then validated."""
    if "/" not in repo_id:
        try:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        except transport_errors as err:
            raise _http_error(err, "cannot find your user name for a bare REPO_ID", endpoint) from None
    if not is_hub_id(repo_id, namespace=True):
        raise ShearHubError(f"invalid REPO_ID {repo_id!r}; use namespace/name with letters, digits, '-', '_', '.'")
    return repo_id


def _prepare_repo(api, folder: Path, repo_id: str, *, repo_type: str, private: bool, base: str, endpoint: str,
                  transport_errors: tuple) -> set[str]:
    """Create the repo (and branch ``base``) when missing; return the paths the remote holds at ``base``."""
    from huggingface_hub import constants

    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                        space_sdk=_space_sdk(folder) if repo_type == "space" else None)
    except transport_errors as err:
        raise _http_error(err, f"cannot create {repo_type} repo {repo_id}", endpoint) from None
    try:
        if base != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=base, repo_type=repo_type, exist_ok=True)
        return set(api.list_repo_files(repo_id, repo_type=repo_type, revision=base))
    except transport_errors as err:
        raise _http_error(err, f"cannot read {repo_id}@{base}", endpoint) from None


def _commit_operations(files: list[LocalFile], remote_paths: set[str]) -> list:
    """Add every local file; delete every remote file the folder lacks (except ``.gitattributes``)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local_paths = {f.path for f in files}
    operations: list = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.abspath)) for f in files]
    operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(remote_paths - local_paths - {".gitattributes"})]
    return operations


def _create_commit(api, repo_id: str, operations: list, files: list[LocalFile], *, message: str, repo_type: str,
                   base: str, create_pr: bool, endpoint: str, token: str | None, transport_errors: tuple):
    """The one commit (its CommitInfo), through Xet or Git LFS as the server offers; errors as ShearHubError."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    # Xet only when the server says it stores large files there; otherwise the LFS protocol, whatever is installed.
    use_xet = _client_wants_xet(constants) and server_offers_xet(
        repo_id, repo_type=repo_type, revision=base, endpoint=endpoint, token=token,
        sample=min(files, key=lambda f: f.size))
    disabled = constants.HF_HUB_DISABLE_XET
    try:
        constants.HF_HUB_DISABLE_XET = disabled or not use_xet  # read by huggingface_hub at upload time
        return api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type,
                                 revision=base, create_pr=create_pr)
    except transport_errors as err:
        if use_xet and not isinstance(err, HfHubHTTPError):
            raise ShearHubError(
                f"upload to {repo_id} failed in the Xet storage that {endpoint} offered ({type(err).__name__}); "
                "re-run the push (it resumes), or set HF_HUB_DISABLE_XET=1 to upload through Git LFS"
            ) from None
        raise _http_error(err, f"upload to {repo_id} failed", endpoint) from None
    except ValueError as err:  # e.g. README.md metadata rejected by the Hub, or a malformed server answer
        raise ShearHubError(f"upload to {repo_id} failed: {str(err).splitlines()[0]}; fix the folder and re-run") from None
    finally:
        constants.HF_HUB_DISABLE_XET = disabled
