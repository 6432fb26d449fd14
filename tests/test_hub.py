"""Checkpoint resolution: local directories and the Hugging Face Hub, all offline.

The Hub cases run the real huggingface_hub code against a cache we fill by hand in the
layout huggingface_hub writes (models--owner--name/{refs/main, snapshots/<commit>/, blobs/}),
or against a local HTTP server that answers like the Hub does for a missing repository.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.loader.hub import looks_like_local, resolve_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 1, "n_embd": 8,
          "n_head": 2, "n_positions": 16, "vocab_size": 50257, "layer_norm_epsilon": 1e-5}


def checkpoint_files(tmp: Path, safetensors: bool = True) -> dict[str, bytes]:
    """A minimal checkpoint's files: config.json and a one-tensor model.safetensors."""
    from safetensors.numpy import save_file

    files = {"config.json": json.dumps(CONFIG).encode(), "vocab.json": b"{}", "merges.txt": b"#version: 0.2\n"}
    if safetensors:
        save_file({"wpe.weight": np.zeros((16, 8), np.float32)}, str(tmp / "st"))
        files["model.safetensors"] = (tmp / "st").read_bytes()
    else:
        files["pytorch_model.bin"] = b"not a safetensors file"
    return files


def fill_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write files into a hub cache as huggingface_hub does; return the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for d in (repo / "blobs", repo / "refs", snapshot):
        d.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)  # subtle: no newline; huggingface_hub reads it verbatim
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))  # relative, like the real cache
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache under tmp_path, offline. huggingface_hub reads its environment once,
    at import, so its constants are patched too (the subprocess test checks the plain env path)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so that no ./gpt2 directory of the caller's is picked up
    return cache


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message, f"error spans lines: {message!r}"
    return message


@pytest.mark.parametrize("repo_id", ["gpt2", "openai-community/gpt2"])
def test_cached_repo_resolves_offline(hub_cache, tmp_path, repo_id):
    snapshot = fill_cache(hub_cache, repo_id, checkpoint_files(tmp_path))
    found = resolve_checkpoint(repo_id)
    assert found == snapshot
    assert json.loads((found / "config.json").read_text())["n_embd"] == 8
    assert (found / "model.safetensors").stat().st_size > 0


def test_progress_is_told_before_fetching(hub_cache, tmp_path):
    fill_cache(hub_cache, "distilgpt2", checkpoint_files(tmp_path))
    lines = []
    resolve_checkpoint("distilgpt2", progress=lines.append)
    assert len(lines) == 1 and "distilgpt2" in lines[0]


def test_not_cached_offline_suggests_a_local_directory(hub_cache):
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint("gpt2-medium")
    message = one_line(e)
    assert "cannot reach the Hugging Face Hub to download 'gpt2-medium'" in message
    assert "not in the local cache" in message and "HF_HUB_OFFLINE" in message
    # what such a directory holds, and where to get it (the message used to end at "gpt2sql load ./dir")
    assert message.endswith("load a local checkpoint directory instead: gpt2sql load DIR, where DIR holds "
                            "config.json and model.safetensors from https://huggingface.co/openai-community/gpt2-medium "
                            "(download them elsewhere, e.g. hf download openai-community/gpt2-medium config.json "
                            "model.safetensors --local-dir DIR, and copy DIR here)")


def test_unreachable_hub_suggests_a_local_directory(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint("gpt2")
    message = one_line(e)
    assert "cannot reach the Hugging Face Hub to download 'gpt2'" in message and "gpt2sql load DIR" in message
    assert "https://huggingface.co/openai-community/gpt2 " in message


def test_missing_repository(hub_cache, monkeypatch):
    """A local server answers like the Hub for an unknown repo: 404 with X-Error-Code RepoNotFound."""
    from huggingface_hub import constants

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            body = b'{"error": "Repository not found"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(Gpt2SqlError) as e:
            resolve_checkpoint("nobody/no-such-model")
    finally:
        server.shutdown()
    assert "no Hugging Face model repository named 'nobody/no-such-model'" in one_line(e)


def test_cached_repo_without_safetensors(hub_cache, tmp_path):
    fill_cache(hub_cache, "someone/old-gpt2", checkpoint_files(tmp_path, safetensors=False))
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint("someone/old-gpt2")
    message = one_line(e)
    assert "'someone/old-gpt2' has no model.safetensors" in message
    assert "only safetensors checkpoints are supported" in message


def test_local_directory(tmp_path):
    for name, data in checkpoint_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
    assert resolve_checkpoint(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json"])
def test_local_directory_missing_a_file(tmp_path, missing):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name, data in checkpoint_files(tmp_path).items():
        if name != missing:
            (ckpt / name).write_bytes(data)
    if missing == "model.safetensors":
        (ckpt / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint(str(ckpt))
    message = one_line(e)
    assert str(ckpt) in message and f"has no {missing}" in message
    if missing == "model.safetensors":
        assert "pytorch_model.bin" in message and "only safetensors checkpoints are supported" in message


def test_local_directory_of_another_architecture(tmp_path):
    for name, data in checkpoint_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, "model_type": "llama"}))
    with pytest.raises(Gpt2SqlError, match="'llama' model, not GPT-2"):
        resolve_checkpoint(str(tmp_path))


@pytest.mark.parametrize("source", ["./no-such-dir", "/no/such/checkpoint", "~/no-such-gpt2sql-ckpt",
                                    "a/b/c", "model.safetensors", "bad name"])
def test_nonexistent_path(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    assert looks_like_local(source)
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint(source)
    assert "does not exist" in one_line(e)


def test_a_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(Gpt2SqlError, match="is a file, not a directory"):
        resolve_checkpoint(str(tmp_path / "config.json"))


@pytest.mark.parametrize("source", ["gpt2", "gpt2-xl", "distilgpt2", "openai-community/gpt2", "user/my.model_v2"])
def test_repo_ids_are_not_local(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_local(source)


def test_local_directory_wins_over_repo_id(tmp_path, monkeypatch):
    (tmp_path / "gpt2").mkdir()
    for name, data in checkpoint_files(tmp_path).items():
        (tmp_path / "gpt2" / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    assert looks_like_local("gpt2")
    assert resolve_checkpoint("gpt2") == Path("gpt2")


def test_environment_is_honoured_in_a_fresh_process(tmp_path):
    """What a user does: HF_HOME and HF_HUB_OFFLINE in the environment, nothing patched."""
    home = tmp_path / "hf"
    snapshot = fill_cache(home / "hub", "gpt2", checkpoint_files(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    code = "from gpt2sql.loader.hub import resolve_checkpoint as r; print(r('gpt2')); r('gpt2-large')"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[0] == str(snapshot)
    assert "Gpt2SqlError: cannot reach the Hugging Face Hub to download 'gpt2-large'" in done.stderr


@pytest.mark.parametrize("source", ["loop", "./loop"])
def test_a_symlink_loop_is_not_a_hub_name(hub_cache, source):
    """`loop -> loop` used to be fetched from the Hub as the repository 'loop'."""
    Path("loop").symlink_to("loop")
    assert looks_like_local(source)
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint(source)
    assert one_line(e) == f"{source} is a symbolic link that loops back on itself: give a checkpoint directory"


def test_a_broken_symlink_says_where_it_points(hub_cache):
    Path("gpt2").symlink_to("/no/such/checkpoint")  # a Hub name, but a link stands there
    assert looks_like_local("gpt2")
    with pytest.raises(Gpt2SqlError) as e:
        resolve_checkpoint("gpt2")
    assert one_line(e) == "gpt2 is a broken symbolic link (to /no/such/checkpoint): give a checkpoint directory"


@pytest.mark.parametrize("args", [[], ["--if-missing"]])
def test_load_of_a_symlink_loop_is_one_line(runner, hub_cache, args):
    Path("loop").symlink_to("loop")
    result = runner(["load", "loop", *args])
    assert result.exit_code == 1, result.output
    assert result.output == "error: loop is a symbolic link that loops back on itself: give a checkpoint directory\n"
