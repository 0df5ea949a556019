"""Pipeline folders from the Hugging Face Hub cache: `CTFPipeline.from_pretrained("user/name")`.

A pipeline folder pushed to the Hub (`hf upload user/name runs/pipe`) and fetched once
(`hf download user/name`) lies in the local Hugging Face cache as
`$HF_HUB_CACHE/models--user--name/snapshots/<commit>/`, with `refs/main` naming the commit.
`resolve_pipeline_folder` finds it there through huggingface_hub with `local_files_only=True`: it
never reaches the network, so loading stays as reproducible as loading a local folder.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError, CtfgenError


def is_repo_id(text: str) -> bool:
    """True for a Hub repository id of the form "namespace/name" (huggingface_hub's rules)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if text.count("/") != 1:  # a bare "name" is far more often a local folder than a Hub repository
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_pipeline_folder(path: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """The local folder that `path` names.

    An existing folder (or any Path object) is returned as is: a local folder wins over a repository
    id of the same spelling. A string "namespace/name" that is not a folder here is looked up in the
    Hugging Face cache (`cache_dir`, default huggingface_hub's: $HF_HUB_CACHE, else
    ~/.cache/huggingface/hub) at its main revision, without network access. Anything else is
    returned as is, for the loader's own "folder not found" error.

    Raises CtfgenError when the repository is not in the cache (naming the id, the cache folder and
    the command that fetches it) or huggingface_hub is not installed.
    """
    if isinstance(path, Path) or Path(path).exists():
        return Path(path)
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError
    except ImportError:
        raise CtfgenError(f"{path}: no such folder, and loading a Hub repository id needs huggingface_hub "
                          "(pip install huggingface_hub)") from None
    if not is_repo_id(path):
        return Path(path)
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(path, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError as e:
        # an incomplete snapshot is a LocalEntryNotFoundError too; its own message names the missing files
        detail = f" ({e})" if type(e) is not LocalEntryNotFoundError else ""
        raise CtfgenError(f"{path}: no such folder here, and no complete copy of the Hub repository '{path}' in the "
                          f"Hugging Face cache {cache}{detail}. Fetch it once with `hf download {path}` (or "
                          f"huggingface_hub.snapshot_download('{path}')); loading never downloads") from None


def check_shareable(folder: Path, copied: bool, repo: str) -> None:
    """Refuse a pipeline from the Hub that references component folders by path: those paths were on
    the machine that made it."""
    if not copied:
        raise ArtifactError(f"{repo} ({folder}) is a pipeline folder made with references to component folders "
                            "on another machine; push one made with copied weights (`ctfgen pipeline make` without "
                            "--reference, or save_pretrained(copy=True))")
