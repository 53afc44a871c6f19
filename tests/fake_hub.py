"""A stand-in for the Hugging Face Hub in tests: records what `HfApi` would create and upload, keeps each
repository's files in a local folder, and serves them back through `snapshot_download`. Nothing reaches the
network."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path
from types import SimpleNamespace


class FakeHub:
    """Install with `FakeHub(root).install(monkeypatch)`; `calls` lists every API call in order."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.calls: list[tuple[str, dict]] = []

    def repo_dir(self, repo_id: str, repo_type: str | None = None) -> Path:
        return self.root / f"{repo_type or 'model'}s" / repo_id

    def files(self, repo_id: str, repo_type: str | None = None) -> list[str]:
        folder = self.repo_dir(repo_id, repo_type)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    # -- HfApi ---------------------------------------------------------------------------------------

    def api(self, token=None, **kwargs):
        hub = self

        class Api:
            def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **rest):
                hub.calls.append(("create_repo", {"repo_id": repo_id, "repo_type": repo_type, "private": private}))
                hub.repo_dir(repo_id, repo_type).mkdir(parents=True, exist_ok=True)
                return SimpleNamespace(repo_id=repo_id)

            def create_commit(self, repo_id, operations, *, repo_type=None, commit_message=None, **rest):
                paths = []
                for operation in operations:
                    target = hub.repo_dir(repo_id, repo_type) / operation.path_in_repo
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = operation.path_or_fileobj
                    if isinstance(source, bytes):
                        target.write_bytes(source)
                    else:
                        shutil.copyfile(source, target)
                    paths.append(operation.path_in_repo)
                hub.calls.append(
                    ("create_commit", {"repo_id": repo_id, "repo_type": repo_type, "paths": paths,
                                       "message": commit_message})
                )  # fmt: skip
                return SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/{len(hub.calls)}")

            def upload_folder(self, *, repo_id, folder_path, repo_type=None, path_in_repo=None,
                              allow_patterns=None, ignore_patterns=None, run_as_future=False, **rest):  # fmt: skip
                folder = Path(folder_path)
                files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                if allow_patterns:
                    files = [f for f in files if any(fnmatch.fnmatch(f, p) for p in allow_patterns)]
                files = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in ignore_patterns or ())]
                for name in files:
                    target = hub.repo_dir(repo_id, repo_type) / (path_in_repo or "") / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(folder / name, target)
                hub.calls.append(
                    ("upload_folder", {"repo_id": repo_id, "repo_type": repo_type, "path_in_repo": path_in_repo,
                                       "files": files})
                )  # fmt: skip
                commit = SimpleNamespace(commit_url=f"https://hub.invalid/{repo_id}/commit/{len(hub.calls)}")
                if not run_as_future:
                    return commit
                from concurrent.futures import Future

                future = Future()  # checkpoint pushes run in the background; Trainer waits on these
                future.set_result(commit)
                return future

        return Api()

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, allow_patterns=None, **kwargs):
        folder = self.repo_dir(repo_id, repo_type)
        if not folder.is_dir():
            raise FileNotFoundError(f"no {repo_type or 'model'} repo {repo_id!r} on the fake hub")
        self.calls.append(("snapshot_download", {"repo_id": repo_id, "repo_type": repo_type}))
        if not allow_patterns:
            return str(folder)
        # Only the files the caller asked for, as the real download would fetch them; later calls add files to the
        # same snapshot folder, as the real one does for one revision.
        local = self.root / "downloads" / (repo_type or "model") / repo_id
        self.calls.append(("snapshot_files", {"repo_id": repo_id, "allow_patterns": list(allow_patterns)}))
        for name in self.files(repo_id, repo_type):
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / name, local / name)
        return str(local)

    def install(self, monkeypatch) -> "FakeHub":
        import huggingface_hub
        import transformers.trainer

        monkeypatch.setattr(huggingface_hub, "HfApi", self.api)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(transformers.trainer, "hf_api", self.api)
        return self
