"""Find a GPT-2 checkpoint: a local directory, or a Hugging Face Hub repository.

`gpt2sql load SOURCE` takes either. A local directory wins when one of that name exists;
anything else that reads as a repo id (`gpt2`, `gpt2-xl`, `openai-community/gpt2`) is
fetched with huggingface_hub into its usual cache (HF_HOME / HF_HUB_CACHE), which also
means HF_HUB_OFFLINE=1 and earlier downloads work without a network. Only the four files
the loader reads are fetched, never the repo's PyTorch/TF/Flax duplicates.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from gpt2sql.errors import Gpt2SqlError

NEEDED = ("config.json", "model.safetensors")  # the tokenizer is bundled; these two are not
# vocab.json/merges.txt, when a repository has them, replace the database's tokenizer for
# every model (loader/model.py; the same files as the bundled ones change nothing)
FILES = [*NEEDED, "vocab.json", "merges.txt"]
# Hub repo ids: `name` or `owner/name`, word characters, '-' and '.', not starting with '.' or '-'.
_REPO_ID = re.compile(r"(?:[\w][\w.-]{0,95}/)?[\w][\w.-]{0,95}")


def looks_like_local(source: str) -> bool:
    """True when SOURCE names a path rather than a Hub repo id ('./gpt2', '/ckpt', '~/m', 'a/b/c')."""
    return (
        os.path.lexists(Path(source).expanduser())  # a link too, even broken or looping
        or source.startswith((".", "/", "~", "\\"))
        or "\\" in source
        or _REPO_ID.fullmatch(source) is None
        or source.endswith((".safetensors", ".json", ".bin"))
    )


def resolve_checkpoint(source: str, *, progress=None) -> Path:
    """A directory holding config.json and model.safetensors for SOURCE.

    progress, when given, is called with one line of text before a Hub download starts
    (huggingface_hub draws its own byte progress bars on stderr).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _checked(path, source)
    if path.is_symlink() and not path.exists():
        raise Gpt2SqlError(f"{source} {_broken_link(path)}: give a checkpoint directory")
    if looks_like_local(source):
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise Gpt2SqlError(f"{source} {what}: give a checkpoint directory (config.json + model.safetensors) or a Hugging Face model name such as gpt2")
    return _checked(_download(source, progress), source, hub=True)


def _broken_link(path: Path) -> str:
    """What is wrong with a symbolic link that leads to nothing."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop so
        return "is a symbolic link that loops back on itself"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself"
    return f"is a broken symbolic link (to {os.readlink(path)})"


# The Hub's own repositories for the short names it redirects
CANONICAL = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
CANONICAL["distilgpt2"] = "distilbert/distilgpt2"


def local_way(repo_id: str) -> str:
    """How to load repo_id without this machine reaching the Hub: what to fetch, from where."""
    repo = CANONICAL.get(repo_id, repo_id)
    return ("load a local checkpoint directory instead: gpt2sql load DIR, where DIR holds config.json and "
            f"model.safetensors from https://huggingface.co/{repo} (download them elsewhere, e.g. hf download {repo} "
            "config.json model.safetensors --local-dir DIR, and copy DIR here)")


def _download(repo_id: str, progress) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    local = local_way(repo_id)
    if progress is not None:
        progress(f"fetching {repo_id} from the Hugging Face Hub (cache: {constants.HF_HUB_CACHE})")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=FILES))
    except RepositoryNotFoundError:  # also gated/private repos without a token
        raise Gpt2SqlError(f"no Hugging Face model repository named '{repo_id}' (or it is private or gated): check the name, e.g. gpt2, gpt2-medium, openai-community/gpt2") from None
    except RevisionNotFoundError:
        raise Gpt2SqlError(f"the Hugging Face repository '{repo_id}' has no main revision") from None
    except HFValidationError:
        raise Gpt2SqlError(f"{repo_id} does not exist and is not a Hugging Face model name") from None
    except LocalEntryNotFoundError as e:  # offline, no network, Hub down, or a partial cached copy
        cause = e.__cause__
        if type(e).__name__ == "IncompleteSnapshotError":
            why = "the cached copy is incomplete"
        elif constants.HF_HUB_OFFLINE:
            why = "HF_HUB_OFFLINE is set"
        elif cause is not None:
            why = f"{type(cause).__name__}: {_first_line(cause)}"
        else:
            why = _first_line(e)
        raise Gpt2SqlError(
            f"cannot reach the Hugging Face Hub to download '{repo_id}' and it is not in the local cache "
            f"({why}; cache {constants.HF_HUB_CACHE}): {local}"
        ) from None
    except Exception as e:  # a proxy, TLS or disk error: still one line
        raise Gpt2SqlError(f"downloading '{repo_id}' from the Hugging Face Hub failed ({type(e).__name__}: {_first_line(e)}): {local}") from None


def _checked(directory: Path, source: str, hub: bool = False) -> Path:
    """directory, after checking it holds a GPT-2 checkpoint the loader can read."""
    missing = [name for name in NEEDED if not (directory / name).is_file()]
    if "model.safetensors" in missing:
        others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.h5"))
        found = f" (found {', '.join(others)})" if others else ""
        where = f"the Hugging Face repository '{source}'" if hub else str(directory)
        raise Gpt2SqlError(f"{where} has no model.safetensors{found}: only safetensors checkpoints are supported")
    if missing:
        raise Gpt2SqlError(f"{directory} has no config.json: a checkpoint directory needs config.json and model.safetensors")
    try:
        model_type = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type", "gpt2")
    except (ValueError, AttributeError):
        raise Gpt2SqlError(f"{directory / 'config.json'} is not a JSON object") from None
    if model_type != "gpt2":
        raise Gpt2SqlError(f"{source} is a '{model_type}' model, not GPT-2 (config.json model_type)")
    return directory


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
