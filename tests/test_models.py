"""The model registry: models.toml, offline resolution, weights checks, sha256 cache, `echo-os models`.

Every weights file here is built in the test (real safetensors, real torch pickles, LFS pointers, cut
and garbled files); the Hugging Face cache is a fake one in tmp with the real on-disk layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from echo_os.cli import cli
from echo_os.errors import ModelError, NotFoundError, UsageError
from echo_os.models import (
    DEFAULT_MODELS_TOML,
    ResolveError,
    check_loadable,
    check_weights_file,
    detect_format,
    file_sha256,
    load_registry,
    model_info,
    parse_models_toml,
    pull_model,
    read_safetensors_header,
    resolve_model,
    select_pull_files,
    sha256_cache_path,
    verify_model,
    weights_sha256,
    write_model_entry,
)
from echo_os.models.registry import model_table_text, toml_string, tomllib
from echo_os.models.weights import format_bytes
from echo_os.settings import REPO_ROOT, Settings

WORKTREE = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b\n"
    "size 6938078334\n"
)


# --- builders -------------------------------------------------------------------------------------------

def save_safetensors(path: Path, tensors: dict[str, tuple[int, ...]] | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    tensors = tensors or {"weight": (4, 4), "bias": (4,)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.ones(shape) for name, shape in tensors.items()}, str(path))
    return path


def save_pickle(path: Path, zip_format: bool = True) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2)}, str(path), _use_new_zipfile_serialization=zip_format)
    return path


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.42.1",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "image_encoder": [None, None],
    "feature_extractor": [None, None],
}


def make_sdxl_folder(root: Path, variant_unet: bool = False, addition_embed_type: str | None = "text_time") -> Path:
    """A diffusers-layout SDXL folder with tiny weights: what from_pretrained would read."""
    write_json(root / "model_index.json", SDXL_INDEX)
    write_json(root / "unet" / "config.json", {"addition_embed_type": addition_embed_type, "cross_attention_dim": 32})
    save_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors")
    if variant_unet:
        save_safetensors(root / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    write_json(root / "vae" / "config.json", {})
    save_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors")
    for name in ("text_encoder", "text_encoder_2"):
        write_json(root / name / "config.json", {"model_type": "clip_text_model"})
        save_safetensors(root / name / "model.safetensors")
    for name in ("tokenizer", "tokenizer_2"):
        write_json(root / name / "vocab.json", {"a": 0})
    write_json(root / "scheduler" / "scheduler_config.json", {})
    return root


def make_hf_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path], commit: str = COMMIT) -> Path:
    """A repo in a Hugging Face cache, laid out as huggingface_hub writes it: blobs, symlinked snapshot, ref."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for relative, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit, encoding="utf-8")
    return snapshot


def make_sdxl_configs(cache: Path) -> Path:
    """SDXL base's configs and tokenizers (no weights) in the cache: what a single-file checkpoint needs."""
    configs = {"model_index.json": json.dumps(SDXL_INDEX).encode(),
               "unet/config.json": json.dumps({"addition_embed_type": "text_time"}).encode(),
               "tokenizer/vocab.json": b"{}", "tokenizer_2/vocab.json": b"{}"}
    return make_hf_repo(cache, "stabilityai/stable-diffusion-xl-base-1.0", configs)


def folder_files(folder: Path) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}


# --- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache per test, so the developer's own cache never leaks in."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ECHO_OS_DEBUG", raising=False)
    return cache


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    folder = tmp_path / "workspace"
    folder.mkdir()
    return Settings(home=folder)


def write_workspace_toml(settings: Settings, text: str) -> None:
    settings.models_toml.write_text(text, encoding="utf-8")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The real entry point (error boundary included), in-process."""
    from echo_os.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def assert_one_line_naming(message: str, path: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message, message


# --- format detection and file checks -------------------------------------------------------------------

def test_detect_format_reads_content_not_name(tmp_path: Path) -> None:
    assert detect_format(save_safetensors(tmp_path / "a.safetensors")) == "safetensors"
    assert detect_format(save_pickle(tmp_path / "b.safetensors")) == "pickle-zip"
    assert detect_format(save_pickle(tmp_path / "c.safetensors", zip_format=False)) == "pickle"
    (tmp_path / "d.safetensors").write_text(LFS_POINTER)
    assert detect_format(tmp_path / "d.safetensors") == "lfs-pointer"
    (tmp_path / "e.safetensors").write_bytes(b"GARBAGE!" * 16)
    assert detect_format(tmp_path / "e.safetensors") == "unknown"


def test_a_checked_file_is_not_read_again_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    from echo_os.models import weights

    path = save_safetensors(tmp_path / "model.safetensors", {"a.weight": (3, 2)})
    reads = []
    real = weights._check_weights_file
    monkeypatch.setattr(weights, "_check_weights_file", lambda p, a: reads.append(p) or real(p, a))
    first = check_weights_file(path)
    assert check_weights_file(path) is first and len(reads) == 1  # the stat signature is unchanged
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated after it was checked: checked again, and refused
    with pytest.raises(ModelError):
        check_weights_file(path)
    with pytest.raises(ModelError):  # a failure is never kept
        check_weights_file(path)
    assert len(reads) == 3


def test_valid_safetensors_header_is_read_without_tensors(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "model.safetensors", {"a.weight": (3, 2), "b.bias": (5,)})
    info = check_weights_file(path)
    assert info.format == "safetensors"
    assert info.tensor_count == 2
    assert set(info.tensor_names) == {"a.weight", "b.bias"}
    assert set(read_safetensors_header(path)) >= {"a.weight", "b.bias"}


def _truncated(tmp_path: Path) -> Path:
    path = save_safetensors(tmp_path / "truncated.safetensors", {"w": (64, 64)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


def _cut_inside_header(tmp_path: Path) -> Path:
    path = save_safetensors(tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    return path


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "badjson.safetensors"
    body = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'  # no closing brace
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\x00" * 4)
    return path


def _offsets_beyond_data(tmp_path: Path) -> Path:
    path = tmp_path / "offsets.safetensors"
    body = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\x00" * 16)
    return path


def _trailing_bytes(tmp_path: Path) -> Path:
    path = save_safetensors(tmp_path / "trailing.safetensors")
    path.write_bytes(path.read_bytes() + b"\x00" * 10)
    return path


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"GARBAGE!" * 64)
    return path


def _lfs(tmp_path: Path) -> Path:
    path = tmp_path / "lfs.safetensors"
    path.write_text(LFS_POINTER)
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path


def _pickle_renamed(tmp_path: Path) -> Path:
    return save_pickle(tmp_path / "renamed.safetensors")


def _legacy_pickle_renamed(tmp_path: Path) -> Path:
    return save_pickle(tmp_path / "legacy.safetensors", zip_format=False)


def _pickle_ckpt(tmp_path: Path) -> Path:
    return save_pickle(tmp_path / "model.ckpt")


def _safetensors_named_ckpt(tmp_path: Path) -> Path:
    return save_safetensors(tmp_path / "model.ckpt")


@pytest.mark.parametrize("build, expected", [
    (_truncated, "truncated safetensors"),
    (_cut_inside_header, "truncated or corrupt safetensors"),
    (_bad_json, "header is not valid JSON"),
    (_offsets_beyond_data, "truncated safetensors"),
    (_trailing_bytes, "unexpected bytes after the tensor data"),
    (_garbage, "not a weights file"),
    (_lfs, "git-LFS pointer to a 6.9 GB file"),
    (_empty, "is empty"),
    (_pickle_renamed, "is named .safetensors but holds a PyTorch pickle checkpoint (zip)"),
    (_legacy_pickle_renamed, "is named .safetensors but holds a PyTorch pickle checkpoint"),
    (_pickle_ckpt, "can run code when loaded"),
    (_safetensors_named_ckpt, "rename it to .safetensors"),
])
def test_bad_weights_file_gives_one_line_naming_the_path(tmp_path: Path, build, expected: str) -> None:
    path = build(tmp_path)
    with pytest.raises(ModelError) as raised:
        check_weights_file(path)
    assert expected in str(raised.value)
    assert_one_line_naming(str(raised.value), path)


def test_pickle_passes_only_when_allowed_and_never_under_a_safetensors_name(tmp_path: Path) -> None:
    info = check_weights_file(_pickle_ckpt(tmp_path), allow_pickle=True)
    assert info.format == "pickle-zip" and info.tensor_names == ()
    with pytest.raises(ModelError, match="is named .safetensors"):
        check_weights_file(_pickle_renamed(tmp_path), allow_pickle=True)


def test_missing_file_and_broken_link(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        check_weights_file(tmp_path / "nope.safetensors")
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "blob-that-never-arrived")
    with pytest.raises(ModelError, match="broken link"):
        check_weights_file(link)


# --- models.toml ----------------------------------------------------------------------------------------

def test_default_registry_names_the_shipped_models(home: Settings) -> None:
    registry = load_registry(home)
    assert registry.names() == ["sdxl", "sdxl-turbo", "sdxl-lightning-4step", "sdxl-lightning-4step-lora", "sdxl-lcm",
                                "lcm-lora-sdxl", "sdxl-tcd", "tcd-lora-sdxl", "ip-adapter-sdxl", "clip-vit-l-14",
                                "minilm", "taesdxl", "svd", "shap-e", "shap-e-img2img", "audioldm2", "stable-audio-open"]
    # the few-step entries carry their render defaults and distillation LoRA (tests/test_fast_models.py)
    assert (registry.get("sdxl-lcm").defaults.scheduler, registry.get("sdxl-lcm").defaults.lora) == (
        "lcm", "lcm-lora-sdxl")
    assert registry.get("lcm-lora-sdxl").type == "lora" and registry.get("sdxl").defaults is None
    sdxl = registry.get("sdxl")
    assert (sdxl.type, sdxl.kind, sdxl.source, sdxl.variant) == (
        "sdxl", "hf", "stabilityai/stable-diffusion-xl-base-1.0", "fp16")
    adapter = registry.get("ip-adapter-sdxl")
    assert (adapter.subfolder, adapter.weight_name) == ("sdxl_models", "ip-adapter_sdxl.safetensors")
    assert registry.get("clip-vit-l-14").type == "clip"
    assert (registry.get("taesdxl").type, registry.get("taesdxl").source) == ("taesd", "madebyollin/taesdxl")
    assert (registry.get("minilm").kind, registry.get("minilm").type) == ("package", "text-embedder")
    assert (registry.get("svd").type, registry.get("svd").source) == ("video", "stabilityai/stable-video-diffusion-img2vid")
    assert registry.sources == (DEFAULT_MODELS_TOML,)


def test_repo_root_models_toml_holds_the_packaged_defaults() -> None:
    """models.toml at the repo root is the shipped default; the package carries the same entries."""
    root_file = REPO_ROOT / "models.toml"
    assert root_file.is_file()
    packaged = {name: (e.type, e.kind, e.source, e.variant, e.subfolder, e.weight_name, e.description)
                for name, e in parse_models_toml(DEFAULT_MODELS_TOML).items()}
    root = {name: (e.type, e.kind, e.source, e.variant, e.subfolder, e.weight_name, e.description)
            for name, e in parse_models_toml(root_file).items()}
    for name, fields in packaged.items():
        assert root.get(name) == fields, (
            f"{root_file} and {DEFAULT_MODELS_TOML} disagree on '{name}': keep them the same file")


def test_minilm_resolves_from_its_installed_package(home: Settings) -> None:
    resolved = load_registry(home).resolve("minilm")
    assert resolved.format == "folder"
    assert resolved.local_path.name == "model"
    assert [path.name for path in resolved.files] == ["model.safetensors"]
    assert check_loadable(resolved)[0].format == "safetensors"


def test_workspace_entry_overrides_default_and_paths_are_relative_to_the_toml(home: Settings) -> None:
    make_sdxl_folder(home.home / "weights" / "my-sdxl")
    write_workspace_toml(home, '[models.sdxl]\npath = "weights/my-sdxl"\n\n[models.extra]\nfile = "x.safetensors"\n')
    registry = load_registry(home)
    sdxl = registry.get("sdxl")
    assert (sdxl.kind, sdxl.source) == ("path", str(home.home / "weights" / "my-sdxl"))
    assert sdxl.origin == home.models_toml
    assert registry.names()[0] == "sdxl" and "extra" in registry and "sdxl-turbo" in registry
    assert registry.resolve("sdxl").format == "diffusers"


@pytest.mark.parametrize("text, expected", [
    ('[models.x]\npth = "a"\n', "models.x.pth: unknown key"),
    ('[models.x]\nhf = "a/b"\npath = "c"\n', "give exactly one of path, hf, file, package (found path, hf)"),
    ('[models.x]\ndescription = "d"\n', "give exactly one of path, hf, file, package (found none)"),
    ('[models.x]\ntype = "sd15"\nhf = "a/b"\n', "models.x.type: unknown type 'sd15'"),
    ('[models.x]\nhf = "not a repo"\n', "models.x.hf: 'not a repo' is not a Hugging Face repo id"),
    ('[models.x]\nfile = "a.safetensors"\nvariant = "fp16"\n', "models.x.variant: does not apply"),
    ('[models.x]\npath = "a"\nrevision = "main"\n', "models.x.revision: only applies to hf entries"),
    ('[models.x]\ntype = "ip-adapter"\nhf = "h94/IP-Adapter"\n', "an ip-adapter entry needs weight_name"),
    ('[models.x]\nhf = "a/b"\nconfig = "c/d"\n', "models.x.config: only applies to a single-file"),
    ('[models.x]\nhf = "a/b"\nallow_pickle = "yes"\n', "models.x.allow_pickle: must be true or false"),
    ('[models.x]\nhf = "a/b"\nvariant = 16\n', "models.x.variant: must be a non-empty string"),
    ('[settings]\nx = 1\n', "unknown key 'settings'"),
    ('[models.x\nhf = "a/b"\n', "invalid TOML"),
])
def test_bad_models_toml_is_one_line_naming_file_and_key(home: Settings, text: str, expected: str) -> None:
    write_workspace_toml(home, text)
    with pytest.raises(UsageError) as raised:
        load_registry(home)
    assert expected in str(raised.value)
    assert_one_line_naming(str(raised.value), home.models_toml)


def test_unknown_model_name_lists_the_known_ones(home: Settings) -> None:
    with pytest.raises(NotFoundError, match="known models: sdxl, sdxl-turbo"):
        load_registry(home).get("sdxl-typo")


# --- resolving ------------------------------------------------------------------------------------------

def test_diffusers_folder_resolves_to_the_files_from_pretrained_reads(home: Settings, tmp_path: Path) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe", variant_unet=True)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never chosen next to safetensors")
    write_workspace_toml(home, f'[models.plain]\npath = "{folder}"\n\n'
                               f'[models.half]\npath = "{folder}"\nvariant = "fp16"\n')
    registry = load_registry(home)
    plain = registry.resolve("plain")
    assert plain.variant is None
    assert [path.relative_to(folder).as_posix() for path in plain.files] == [
        "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    half = registry.resolve("half")
    assert half.variant == "fp16"  # unet has fp16 files; other components fall back to plain ones
    assert folder / "unet" / "diffusion_pytorch_model.fp16.safetensors" in half.files
    assert folder / "vae" / "diffusion_pytorch_model.safetensors" in half.files


def test_variant_absent_everywhere_is_dropped(home: Settings, tmp_path: Path) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe")
    write_workspace_toml(home, f'[models.m]\npath = "{folder}"\nvariant = "fp16"\n')
    assert load_registry(home).resolve("m").variant is None


def test_folder_with_only_variant_files_says_which_variant_to_set(home: Settings, tmp_path: Path) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe")
    for plain in folder.glob("*/*.safetensors"):
        plain.rename(plain.with_name(plain.name.replace(".safetensors", ".fp16.safetensors")))
    write_workspace_toml(home, f'[models.m]\npath = "{folder}"\n')
    with pytest.raises(ResolveError, match='it has only fp16 variant files: set variant = "fp16"'):
        load_registry(home).resolve("m")


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "model_index.json").unlink(), "has no model_index.json"),
    (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "has no weights file"),
    (lambda f: (f / "model_index.json").write_text("{nope"), "is not valid JSON"),
])
def test_broken_diffusers_folder(home: Settings, tmp_path: Path, damage, expected: str) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe")
    damage(folder)
    write_workspace_toml(home, f'[models.m]\npath = "{folder}"\n')
    with pytest.raises(ModelError, match=expected) as raised:
        load_registry(home).resolve("m")
    assert "model 'm'" in str(raised.value) and "\n" not in str(raised.value)


def test_lfs_pointer_inside_a_pipeline_is_caught_before_loading(home: Settings, tmp_path: Path) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe")
    pointer = folder / "unet" / "diffusion_pytorch_model.safetensors"
    pointer.write_text(LFS_POINTER)
    write_workspace_toml(home, f'[models.m]\npath = "{folder}"\n')
    resolved = load_registry(home).resolve("m")
    with pytest.raises(ModelError) as raised:
        check_loadable(resolved)
    assert str(raised.value).startswith("model 'm': ")
    assert "git-LFS pointer" in str(raised.value)
    assert_one_line_naming(str(raised.value), pointer)


def test_pickle_weights_in_a_pipeline_need_allow_pickle(home: Settings, tmp_path: Path) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe")
    (folder / "text_encoder" / "model.safetensors").unlink()
    pickle = save_pickle(folder / "text_encoder" / "pytorch_model.bin")
    write_workspace_toml(home, f'[models.strict]\npath = "{folder}"\n\n'
                               f'[models.trusted]\npath = "{folder}"\nallow_pickle = true\n')
    registry = load_registry(home)
    strict = registry.resolve("strict")
    assert pickle in strict.files
    with pytest.raises(ModelError, match="can run code when loaded") as raised:
        check_loadable(strict)
    assert_one_line_naming(str(raised.value), pickle)
    assert any(info.format == "pickle-zip" for info in check_loadable(strict, allow_pickle=True))
    assert len(check_loadable(registry.resolve("trusted"))) == 4


def test_missing_local_paths(home: Settings, tmp_path: Path) -> None:
    checkpoint = save_safetensors(tmp_path / "one.safetensors")
    write_workspace_toml(home, '[models.gone]\npath = "nowhere"\n\n'
                               f'[models.swapped]\npath = "{checkpoint}"\n\n'
                               f'[models.dir]\nfile = "{tmp_path}"\n')
    registry = load_registry(home)
    with pytest.raises(ResolveError, match="does not exist"):
        registry.resolve("gone")
    with pytest.raises(ResolveError, match="use file ="):
        registry.resolve("swapped")
    with pytest.raises(ResolveError, match="use path ="):
        registry.resolve("dir")


def test_hf_entry_resolves_offline_from_the_cache(home: Settings, tmp_path: Path, hf_cache: Path) -> None:
    source = make_sdxl_folder(tmp_path / "source", variant_unet=True)
    snapshot = make_hf_repo(hf_cache, "stabilityai/stable-diffusion-xl-base-1.0", folder_files(source))
    resolved = load_registry(home).resolve("sdxl")  # the default entry, variant fp16
    assert resolved.local_path == snapshot
    assert resolved.commit == COMMIT
    assert resolved.variant == "fp16"
    assert snapshot / "unet" / "diffusion_pytorch_model.fp16.safetensors" in resolved.files
    assert resolved.source_ref == f"hf:stabilityai/stable-diffusion-xl-base-1.0@{COMMIT}"
    assert len(check_loadable(resolved)) == 4


def test_hf_entry_missing_from_cache_says_how_to_get_it(home: Settings) -> None:
    with pytest.raises(ResolveError) as raised:
        load_registry(home).resolve("sdxl")
    message = str(raised.value)
    assert message.startswith("model 'sdxl' (hf stabilityai/stable-diffusion-xl-base-1.0) is not in the local "
                              "Hugging Face cache")
    assert "run `echo-os models pull sdxl` or point models.toml at a folder" in message
    assert raised.value.reason == "not in the local Hugging Face cache"


def test_hf_revision_pins_a_snapshot(home: Settings, hf_cache: Path) -> None:
    weights = save_safetensors(hf_cache.parent / "w.safetensors", {"image_proj.proj.weight": (2, 2),
                                                                   "ip_adapter.1.to_k_ip.weight": (2, 2)})
    other = "f" * 40
    make_hf_repo(hf_cache, "org/adapter", {"a.safetensors": weights, "image_encoder/config.json": b"{}",
                                           "image_encoder/model.safetensors": weights}, commit=other)
    write_workspace_toml(home, f'[models.pinned]\ntype = "ip-adapter"\nhf = "org/adapter"\n'
                               f'weight_name = "a.safetensors"\nrevision = "{other}"\n\n'
                               f'[models.branch]\ntype = "ip-adapter"\nhf = "org/adapter"\n'
                               f'weight_name = "a.safetensors"\nrevision = "v2"\n')
    registry = load_registry(home)
    assert registry.resolve("pinned").commit == other
    with pytest.raises(ResolveError, match="at revision v2"):
        registry.resolve("branch")


def test_ip_adapter_from_hf_cache_with_its_image_encoder(home: Settings, hf_cache: Path, tmp_path: Path) -> None:
    adapter = save_safetensors(tmp_path / "ip.safetensors", {"image_proj.proj.weight": (4, 4),
                                                             "ip_adapter.1.to_k_ip.weight": (4, 4)})
    encoder = save_safetensors(tmp_path / "enc.safetensors")
    snapshot = make_hf_repo(hf_cache, "h94/IP-Adapter", {
        "sdxl_models/ip-adapter_sdxl.safetensors": adapter,
        "sdxl_models/image_encoder/config.json": json.dumps({"model_type": "clip_vision_model"}).encode(),
        "sdxl_models/image_encoder/model.safetensors": encoder,
    })
    resolved = load_registry(home).resolve("ip-adapter-sdxl")
    assert resolved.format == "single-file"
    assert resolved.local_path == snapshot / "sdxl_models" / "ip-adapter_sdxl.safetensors"
    assert resolved.image_encoder.local_path == snapshot / "sdxl_models" / "image_encoder"
    assert resolved.image_encoder.files == (snapshot / "sdxl_models" / "image_encoder" / "model.safetensors",)
    report = verify_model(home, "ip-adapter-sdxl")
    assert report.ok, report.problems
    assert report.sha256 == hashlib.sha256(adapter.read_bytes()).hexdigest()
    assert report.image_encoder_sha256 is not None


def test_ip_adapter_image_encoder_by_entry_name(home: Settings, tmp_path: Path) -> None:
    save_safetensors(tmp_path / "ip" / "ip.safetensors", {"image_proj.w": (2,), "ip_adapter.1.w": (2,)})
    write_json(tmp_path / "clip" / "config.json", {"model_type": "clip"})
    save_safetensors(tmp_path / "clip" / "model.safetensors")
    write_workspace_toml(home, f'[models.enc]\ntype = "clip"\npath = "{tmp_path / "clip"}"\n\n'
                               f'[models.ip]\ntype = "ip-adapter"\nfile = "{tmp_path / "ip" / "ip.safetensors"}"\n'
                               'image_encoder = "enc"\n\n'
                               f'[models.bad]\ntype = "ip-adapter"\nfile = "{tmp_path / "ip" / "ip.safetensors"}"\n'
                               'image_encoder = "minilm"\n')
    registry = load_registry(home)
    assert registry.resolve("ip").image_encoder.entry.name == "enc"
    with pytest.raises(ModelError, match="type text-embedder, not clip"):
        registry.resolve("bad")
    write_workspace_toml(home, f'[models.ip]\ntype = "ip-adapter"\nfile = "{tmp_path / "ip" / "ip.safetensors"}"\n'
                               'image_encoder = "nope"\n')
    with pytest.raises(ModelError, match="image_encoder 'nope' is not a model in models.toml"):
        load_registry(home).resolve("ip")


def test_single_file_with_config_from_hf_cache(home: Settings, hf_cache: Path, tmp_path: Path) -> None:
    checkpoint = save_safetensors(tmp_path / "juggernaut.safetensors", {
        "conditioner.embedders.1.model.ln_final.weight": (4,), "model.diffusion_model.label_emb.0.0.weight": (4, 4)})
    write_workspace_toml(home, f'[models.jugg]\nfile = "{checkpoint}"\n'
                               'config = "stabilityai/stable-diffusion-xl-base-1.0"\n')
    with pytest.raises(ResolveError) as raised:
        load_registry(home).resolve("jugg")
    assert "needs the SDXL pipeline configs of stabilityai/stable-diffusion-xl-base-1.0, which are not in the " \
           "local Hugging Face cache; run `echo-os models pull jugg`" in str(raised.value)
    unchecked = resolve_model(load_registry(home).get("jugg"), need_configs=False)
    assert unchecked.config_path is None
    not_ok = verify_model(home, "jugg")
    assert not_ok.problems == [str(raised.value)] and not_ok.sha256 is not None
    snapshot = make_sdxl_configs(hf_cache)
    resolved = load_registry(home).resolve("jugg")
    assert (resolved.format, resolved.local_path, resolved.config_path) == ("single-file", checkpoint, snapshot)
    report = verify_model(home, "jugg")
    assert report.ok, report.problems
    assert any("SDXL checkpoint" in line for line in report.layout)


# --- sha256 and its cache -------------------------------------------------------------------------------

def test_single_file_sha256_is_the_file_digest_and_is_cached(home: Settings, tmp_path: Path,
                                                             hf_cache: Path) -> None:
    make_sdxl_configs(hf_cache)
    checkpoint = save_safetensors(tmp_path / "m.safetensors", {"conditioner.embedders.1.x": (8,)})
    write_workspace_toml(home, f'[models.m]\nfile = "{checkpoint}"\n')
    resolved = load_registry(home).resolve("m")
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert weights_sha256(home, resolved) == digest

    cache_path = sha256_cache_path(home)
    cache = json.loads(cache_path.read_text())
    entry = cache["files"][os.path.realpath(checkpoint)]
    assert entry == {"size": checkpoint.stat().st_size, "mtime_ns": checkpoint.stat().st_mtime_ns, "sha256": digest}

    # While size and mtime match, the cached value is trusted as is: the file is not read again.
    entry["sha256"] = "c" * 64
    cache_path.write_text(json.dumps(cache))
    assert weights_sha256(home, resolved) == "c" * 64
    # A changed mtime means the file changed: hashed again.
    os.utime(checkpoint, ns=(entry["mtime_ns"] + 10**9, entry["mtime_ns"] + 10**9))
    assert weights_sha256(home, resolved) == digest


def test_folder_sha256_covers_relative_paths_and_file_digests(home: Settings, tmp_path: Path) -> None:
    folder = make_sdxl_folder(tmp_path / "pipe")
    write_workspace_toml(home, f'[models.m]\npath = "{folder}"\n')
    resolved = load_registry(home).resolve("m")
    lines = sorted(f"{path.relative_to(folder).as_posix()}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                   for path in resolved.files)
    expected = hashlib.sha256("".join(lines).encode()).hexdigest()
    assert weights_sha256(home, resolved) == expected
    # Moving the folder keeps the digest (paths are relative); changing a weight changes it.
    moved = folder.rename(tmp_path / "moved")
    write_workspace_toml(home, f'[models.m]\npath = "{moved}"\n')
    assert weights_sha256(home, load_registry(home).resolve("m")) == expected
    save_safetensors(moved / "vae" / "diffusion_pytorch_model.safetensors", {"other": (3,)})
    assert weights_sha256(home, load_registry(home).resolve("m")) != expected
    info = model_info(home, load_registry(home).resolve("m"))
    assert (info.name, info.kind, info.source) == ("m", "path", f"path:{moved}")


def test_damaged_sha_cache_is_rebuilt(home: Settings, tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "m.safetensors")
    sha256_cache_path(home).parent.mkdir(parents=True)
    sha256_cache_path(home).write_text("{not json")
    assert file_sha256(home, path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(sha256_cache_path(home).read_text())["version"] == 1


# --- verify ---------------------------------------------------------------------------------------------

def test_verify_sdxl_pipeline(home: Settings, tmp_path: Path) -> None:
    make_sdxl_folder(tmp_path / "ok")
    make_sdxl_folder(tmp_path / "sd15ish", addition_embed_type=None)
    write_workspace_toml(home, f'[models.ok]\npath = "{tmp_path / "ok"}"\n\n'
                               f'[models.notxl]\npath = "{tmp_path / "sd15ish"}"\n')
    report = verify_model(home, "ok")
    assert report.ok, report.problems
    assert report.layout[0] == "pipeline class StableDiffusionXLPipeline"
    assert any("addition_embed_type text_time" in line for line in report.layout)
    assert len(report.files) == 4 and all(f.format == "safetensors" for f in report.files)
    bad = verify_model(home, "notxl")
    assert not bad.ok
    assert "addition_embed_type is None, not 'text_time'" in bad.problems[0]


def test_verify_single_files(home: Settings, tmp_path: Path, hf_cache: Path) -> None:
    make_sdxl_configs(hf_cache)
    sd15 = save_safetensors(tmp_path / "sd15.safetensors", {"cond_stage_model.transformer.w": (2,)})
    legacy = save_pickle(tmp_path / "old.ckpt")
    write_workspace_toml(home, f'[models.sd15]\nfile = "{sd15}"\n\n[models.old]\nfile = "{legacy}"\n')
    report = verify_model(home, "sd15")
    assert report.problems == [f"{sd15}: a Stable Diffusion 1.x/2.x checkpoint (cond_stage_model), not SDXL."]
    refused = verify_model(home, "old")
    assert "can run code when loaded" in refused.problems[0] and refused.sha256 is None
    allowed = verify_model(home, "old", allow_pickle=True)
    assert allowed.ok and allowed.files[0].format == "pickle-zip"
    assert "never opened" in allowed.layout[0]


# --- the CLI --------------------------------------------------------------------------------------------

def test_cli_list_shows_what_resolves_here(home: Settings, tmp_path: Path) -> None:
    make_sdxl_folder(tmp_path / "pipe")
    write_workspace_toml(home, f'[models.local]\npath = "{tmp_path / "pipe"}"\n')
    runner = CliRunner()
    result = runner.invoke(cli,
                           ["--home", str(home.home), "models", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "no: not in the local Hugging Face cache" in lines["sdxl"]
    size = format_bytes(load_registry(home).resolve("local").weights_size)
    assert " yes " in lines["local"] and lines["local"].rstrip().endswith(f"  {size}")
    assert " yes " in lines["minilm"]
    result = runner.invoke(cli,
                           ["--home", str(home.home), "models", "list", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["local"]["resolves"] and rows["local"]["format"] == "diffusers" and rows["local"]["size_bytes"] > 0
    assert not rows["sdxl"]["resolves"] and "echo-os models pull sdxl" in rows["sdxl"]["error"]


def test_cli_add_path_then_verify(home: Settings, capsys: pytest.CaptureFixture) -> None:
    make_sdxl_folder(home.home / "models" / "tiny")
    code, out, err = run_cli(["--home", str(home.home), "models", "add", "tiny", "--path",
                              str(home.home / "models" / "tiny"), "--description", 'say "hi"'], capsys)
    assert code == 0, err
    assert f"Added 'tiny' in {home.models_toml}" in out
    document = tomllib.loads(home.models_toml.read_text())
    assert document["models"]["tiny"] == {"path": "models/tiny", "description": 'say "hi"'}
    code, out, err = run_cli(["--home", str(home.home), "models", "verify", "tiny"], capsys)
    assert code == 0, err
    assert "layout: pipeline class StableDiffusionXLPipeline" in out
    assert out.rstrip().endswith("OK")


def test_cli_add_refuses_a_pickle_unless_allowed(home: Settings, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    checkpoint = save_pickle(tmp_path / "civitai.ckpt")
    code, out, err = run_cli(["--home", str(home.home), "models", "add", "c", "--file", str(checkpoint)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(checkpoint) in err and "--allow-pickle" in err
    assert not home.models_toml.exists()
    code, out, err = run_cli(["--home", str(home.home), "models", "add", "c", "--file", str(checkpoint),
                              "--allow-pickle"], capsys)
    assert code == 0, err
    assert "configs (stabilityai/stable-diffusion-xl-base-1.0) are not in the local Hugging Face cache" in out
    assert tomllib.loads(home.models_toml.read_text())["models"]["c"] == {"file": str(checkpoint),
                                                                         "allow_pickle": True}
    assert load_registry(home).get("c").allow_pickle


def test_cli_add_keeps_comments_refuses_duplicates_and_replaces_with_force(
        home: Settings, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = save_safetensors(tmp_path / "first.safetensors", {"conditioner.embedders.1.w": (2,)})
    second = save_safetensors(tmp_path / "second.safetensors", {"conditioner.embedders.1.w": (3,)})
    write_workspace_toml(home, "# my notes\n[models.keep]\nhf = \"org/keep\"  # pulled later\n\n"
                               f"[models.m]\nfile = \"{first}\"\n\n# about after\n[models.after]\n"
                               "hf = \"org/after\"\n")
    code, _, err = run_cli(["--home", str(home.home), "models", "add", "m", "--file", str(second)], capsys)
    assert code == 2 and "already has a model named 'm'; use --force" in err
    code, out, err = run_cli(["--home", str(home.home), "models", "add", "m", "--file", str(second), "--force"],
                             capsys)
    assert code == 0, err
    assert "Replaced 'm'" in out
    text = home.models_toml.read_text()
    assert "# my notes" in text and "# pulled later" in text and "# about after\n[models.after]" in text
    assert str(first) not in text
    document = tomllib.loads(text)["models"]
    assert document == {"keep": {"hf": "org/keep"}, "after": {"hf": "org/after"}, "m": {"file": str(second)}}


def test_cli_add_hf_not_cached_yet_and_default_override(home: Settings, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["--home", str(home.home), "models", "add", "sdxl", "--hf", "org/my-sdxl",
                              "--variant", "fp16"], capsys)
    assert code == 0, err
    assert "(overrides the default entry)" in out and "echo-os models pull sdxl" in out
    assert load_registry(home).get("sdxl").source == "org/my-sdxl"


@pytest.mark.parametrize("args, expected", [
    (["add", "x"], "give exactly one of --path DIR, --file FILE or --hf REPO_ID"),
    (["add", "x", "--hf", "a/b", "--path", "."], "give exactly one of"),
    (["add", "bad name", "--hf", "a/b"], "model name 'bad name'"),
    (["add", "x", "--path", "does-not-exist"], "does not exist"),
    (["add", "x", "--type", "ip-adapter", "--hf", "h94/IP-Adapter"], "needs weight_name"),
    (["verify", "nope"], "no model named 'nope'"),
    (["verify", "sdxl"], "is not in the local Hugging Face cache"),
    (["pull", "minilm"], "only hf entries (and the configs of a single-file sdxl checkpoint) can be pulled"),
])
def test_cli_usage_errors_exit_2_with_one_line(home: Settings, capsys: pytest.CaptureFixture, args, expected) -> None:
    code, out, err = run_cli(["--home", str(home.home), "models", *args], capsys)
    assert code == 2
    assert expected in err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_verify_corrupt_model_in_a_subprocess(home: Settings, tmp_path: Path) -> None:
    """The installed entry point: exit 2, one line on stderr naming the file, no traceback."""
    renamed = save_pickle(tmp_path / "model.safetensors")
    write_workspace_toml(home, f'[models.m]\nfile = "{renamed}"\n')
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    env.pop("ECHO_OS_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "echo_os", "--home", str(home.home), "models", "verify", "m"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"model 'm' failed verification: {renamed}: is named .safetensors but holds a PyTorch pickle" in done.stderr
    assert "BAD model.safetensors" in done.stdout


def test_pull_refuses_non_hf_entries_before_any_network(home: Settings, tmp_path: Path) -> None:
    make_sdxl_folder(tmp_path / "configs")
    checkpoint = save_safetensors(tmp_path / "m.safetensors")
    write_workspace_toml(home, f'[models.local]\npath = "{tmp_path}"\n\n'
                               f'[models.ckpt]\nfile = "{checkpoint}"\nconfig = "{tmp_path / "configs"}"\n')
    for name, kind in (("local", "path"), ("ckpt", "file")):
        with pytest.raises(ModelError) as raised:
            pull_model(home, name)
        assert str(raised.value).startswith(f"model '{name}' ({kind} ")
        assert "only hf entries (and the configs of a single-file sdxl checkpoint) can be pulled" in str(raised.value)


# --- pull's file choice (pure: no network) --------------------------------------------------------------

SDXL_REPO_FILES = [
    ".gitattributes", "README.md", "LICENSE.md", "model_index.json", "sd_xl_base_1.0.safetensors",
    "sd_xl_base_1.0_0.9vae.safetensors", "sd_xl_offset_example-lora_1.0.safetensors", "01.png",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/openvino_model.bin", "text_encoder/model.onnx",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors", "text_encoder_2/model.fp16.safetensors",
    "text_encoder_2/pytorch_model.bin", "text_encoder_2/model.onnx_data",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_flax_model.msgpack", "unet/openvino_model.xml", "unet/model.onnx",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae_1_0/config.json", "vae_1_0/diffusion_pytorch_model.safetensors",
    "vae_decoder/config.json", "vae_decoder/model.onnx",
]
SDXL_PULL_COMMON = [
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder_2/config.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json", "unet/config.json", "vae/config.json",
]


def test_pull_chooses_only_the_files_loading_reads(home: Settings) -> None:
    sdxl = load_registry(home).get("sdxl")  # variant fp16
    chosen = select_pull_files(sdxl, SDXL_REPO_FILES, SDXL_INDEX)
    assert sorted(chosen) == sorted(SDXL_PULL_COMMON + [
        "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"])
    plain = select_pull_files(sdxl.__class__(**{**sdxl.__dict__, "variant": None}), SDXL_REPO_FILES, SDXL_INDEX)
    assert "unet/diffusion_pytorch_model.safetensors" in plain and not any(".fp16." in f for f in plain)
    assert not any(f.endswith((".bin", ".onnx", ".msgpack")) or f.startswith("vae_1_0") for f in plain)

    adapter = load_registry(home).get("ip-adapter-sdxl")
    repo = ["models/ip-adapter_sd15.bin", "sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/ip-adapter_sdxl.bin",
            "sdxl_models/image_encoder/config.json", "sdxl_models/image_encoder/model.safetensors",
            "sdxl_models/image_encoder/pytorch_model.bin", "models/image_encoder/model.safetensors"]
    assert select_pull_files(adapter, repo) == [
        "sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder/config.json",
        "sdxl_models/image_encoder/model.safetensors"]

    clip = load_registry(home).get("clip-vit-l-14")
    repo = ["config.json", "merges.txt", "model.safetensors", "pytorch_model.bin", "tf_model.h5",
            "flax_model.msgpack", "preprocessor_config.json", "tokenizer.json", "vocab.json", "README.md"]
    assert select_pull_files(clip, repo) == ["config.json", "merges.txt", "model.safetensors",
                                             "preprocessor_config.json", "tokenizer.json", "vocab.json"]


def test_pull_keeps_the_shard_index_of_sharded_weights(home: Settings) -> None:
    entry = load_registry(home).get("clip-vit-l-14")
    repo = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"]
    assert select_pull_files(entry, repo) == ["config.json", "model-00001-of-00002.safetensors",
                                              "model-00002-of-00002.safetensors", "model.safetensors.index.json"]


# --- writing models.toml --------------------------------------------------------------------------------

def test_small_toml_writer_round_trips_awkward_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tomli_w", None)  # force the fallback writer
    awkward = 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f unicode é ✓'
    fields = {"type": "sdxl", "file": "C:\\models\\x.safetensors", "description": awkward, "allow_pickle": True}
    text = model_table_text("na.me", fields)
    assert text.startswith('[models."na.me"]\n')
    assert tomllib.loads(text) == {"models": {"na.me": fields}}
    assert toml_string("plain") == '"plain"'


def test_replacing_an_inline_table_rewrites_the_file(home: Settings) -> None:
    write_workspace_toml(home, 'models = { m = { hf = "org/old" }, other = { hf = "org/other" } }\n')
    write_model_entry(home.models_toml, "m", {"hf": "org/new"}, replace=True)
    assert tomllib.loads(home.models_toml.read_text()) == {
        "models": {"other": {"hf": "org/other"}, "m": {"hf": "org/new"}}}
    with pytest.raises(UsageError, match="already has a model named 'm'"):
        write_model_entry(home.models_toml, "m", {"hf": "org/x"}, replace=False)


def test_a_parsed_models_toml_is_reused_until_the_file_changes(tmp_path):
    """The API asks the registry several times a submission: the parse is kept, and any change to the
    file (even one of the same size) is read again."""
    import os

    from echo_os.models import registry as reg
    from echo_os.settings import load_settings

    home = tmp_path / "home"
    home.mkdir()
    toml = home / "models.toml"
    toml.write_text('[models.aaaa]\ntype = "sdxl"\npath = "/tmp/a"\n', encoding="utf-8")
    settings = load_settings(home)
    first = reg.load_registry(settings)
    assert "aaaa" in first and reg.load_registry(settings).get("aaaa") is first.get("aaaa")  # the parse is kept
    stat = toml.stat()
    toml.write_text('[models.bbbb]\ntype = "sdxl"\npath = "/tmp/b"\n', encoding="utf-8")  # same size
    os.utime(toml, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime: ctime moved
    again = reg.load_registry(settings)
    assert "bbbb" in again and "aaaa" not in again
    toml.write_text("[models.bbbb\n", encoding="utf-8")  # a broken file is an error each time, never cached
    for _ in range(2):
        with pytest.raises(Exception, match="invalid TOML"):
            reg.load_registry(settings)


def test_a_safetensors_header_of_896_bytes_is_not_taken_for_a_pickle(tmp_path) -> None:
    """Regression: a header length of 0x380 starts the file with \\x80\\x03, a pickle's opening bytes; such a file
    (Stable Audio's projection model saves one) was refused as 'a PyTorch pickle checkpoint'."""
    import torch
    from safetensors.torch import save_file

    from echo_os.models.weights import check_weights_file, detect_format

    path = tmp_path / "model.safetensors"
    for names in range(1, 40):  # grow the header until its length is 0x280..0x580 with a low byte of 0x80
        save_file({f"tensor_number_{i:03d}": torch.zeros(1) for i in range(names)}, str(path))
        if path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
            break
    else:
        pytest.skip("no header length with a low byte of 0x80 in range")
    assert detect_format(path) == "safetensors"
    assert check_weights_file(path).format == "safetensors"
    pickle = tmp_path / "old.bin"
    pickle.write_bytes(b"\x80\x02" + b"}q\x00." + b"\x00" * 64)
    assert detect_format(pickle) == "pickle"
