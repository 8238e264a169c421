"""`echo-os models verify NAME`: every weights file readable, the layout the type promises, the sha256.

Nothing is loaded into memory: safetensors headers are parsed on their own, pickles are never opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from echo_os.errors import ModelError
from echo_os.models.hashing import weights_sha256
from echo_os.models.registry import ModelEntry, ModelRegistry, load_registry
from echo_os.models.resolve import ResolvedModel, pipeline_components, resolve_model
from echo_os.models.weights import (
    SDXL_SINGLE_FILE_PREFIXES,
    WeightsFileInfo,
    check_weights_file,
    sdxl_single_file_problem,
)

if TYPE_CHECKING:
    from echo_os.settings import Settings



@dataclass
class FileReport:
    path: Path
    relative: str
    format: str | None
    size: int | None
    tensor_count: int | None
    problem: str | None = None


@dataclass
class VerifyReport:
    """What verify found. ok means no problems: every file checks out and the layout is the right one."""

    entry: ModelEntry
    resolved: ResolvedModel
    files: list[FileReport] = field(default_factory=list)
    layout: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sha256: str | None = None
    image_encoder_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "name": self.entry.name,
            "type": self.entry.type,
            "kind": self.entry.kind,
            "source": self.resolved.source_ref,
            "local_path": str(self.resolved.local_path),
            "format": self.resolved.format,
            "variant": self.resolved.variant,
            "config_path": str(self.resolved.config_path) if self.resolved.config_path else None,
            "files": [
                {"path": str(report.path), "relative": report.relative, "format": report.format,
                 "size": report.size, "tensors": report.tensor_count, "problem": report.problem}
                for report in self.files
            ],
            "layout": self.layout,
            "problems": self.problems,
            "sha256": self.sha256,
            "image_encoder_sha256": self.image_encoder_sha256,
            "ok": self.ok,
        }


def verify_model(settings: "Settings", name: str, allow_pickle: bool = False,
                 registry: ModelRegistry | None = None, show_progress: bool = False) -> VerifyReport:
    """Check one model without loading it. Resolution failures raise; file and layout problems are listed."""
    registry = registry or load_registry(settings)
    entry = registry.get(name)
    resolved = resolve_model(entry, registry=registry, need_configs=False)
    report = VerifyReport(entry=entry, resolved=resolved)
    allow = allow_pickle or entry.allow_pickle

    infos = _check_files(report, resolved, allow)
    if resolved.image_encoder is not None:
        _check_files(report, resolved.image_encoder, allow or resolved.image_encoder.entry.allow_pickle,
                     label="image_encoder/")

    if entry.type == "sdxl" and resolved.format == "diffusers":
        _check_sdxl_pipeline(report, resolved.local_path)
    elif entry.type == "sdxl":
        _check_sdxl_single_file(report, infos[0] if infos else None)
        if resolved.config_path is not None:
            _check_sdxl_pipeline(report, resolved.config_path, configs_only=True)
    elif entry.type == "ip-adapter":
        _check_ip_adapter(report, infos[0] if infos else None)
    elif entry.type == "lora":
        _check_lora(report, infos[0] if infos else None)
    elif entry.type == "video":
        _check_video_pipeline(report, resolved.local_path)
    elif entry.type in ("3d", "audio"):
        pass  # the file checks above; loading the pipeline checks its components
    elif entry.type == "scorer":
        pass  # the file checks above are all a scorer head needs; loading it checks its shapes
    else:
        _check_model_folder(report, resolved.local_path, entry.type)

    if resolved.format == "single-file" and entry.type == "sdxl" and resolved.config_path is None:
        try:  # resolve again, strictly, for the message saying how to get the configs
            resolve_model(entry, registry=registry)
        except ModelError as error:
            report.problems.append(str(error))

    if not any(file_report.problem for file_report in report.files):
        report.sha256 = weights_sha256(settings, resolved, show_progress=show_progress)
        if resolved.image_encoder is not None:
            report.image_encoder_sha256 = weights_sha256(settings, resolved.image_encoder, show_progress)
    return report


def _check_files(report: VerifyReport, resolved: ResolvedModel, allow_pickle: bool,
                 label: str = "") -> list[WeightsFileInfo]:
    base = resolved.local_path if resolved.format != "single-file" else resolved.local_path.parent
    infos = []
    for path in resolved.files:
        relative = label + (path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path))
        try:
            info = check_weights_file(path, allow_pickle=allow_pickle)
        except ModelError as error:
            report.files.append(FileReport(path, relative, None, _size(path), None, problem=str(error)))
            report.problems.append(str(error))
            continue
        infos.append(info)
        report.files.append(FileReport(path, relative, info.format, info.size, info.tensor_count))
    return infos


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _json(path: Path, report: VerifyReport) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problems.append(f"{path}: missing.")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        report.problems.append(f"{path}: not valid JSON ({error}).")
        return None
    if not isinstance(data, dict):
        report.problems.append(f"{path}: not a JSON object.")
        return None
    return data


def _check_sdxl_pipeline(report: VerifyReport, folder: Path, configs_only: bool = False) -> None:
    """SDXL = an SDXL pipeline class, a second text encoder, and a UNet with time-id conditioning.

    The UNet's cross_attention_dim (2048 for the real model) is reported but not required, so tiny
    test pipelines with small dimensions verify too.
    """
    what = "config folder" if configs_only else "pipeline"
    index = _json(folder / "model_index.json", report)
    if index is None:
        return
    class_name = str(index.get("_class_name", ""))
    components = pipeline_components(index)
    if class_name.startswith("StableDiffusionXL"):
        report.layout.append(f"{what} class {class_name}")
    else:
        report.problems.append(f"{folder / 'model_index.json'}: pipeline class is '{class_name or 'missing'}', not "
                               "an SDXL pipeline (StableDiffusionXLPipeline).")
    if "text_encoder_2" in components:
        report.layout.append(f"text_encoder_2 {components['text_encoder_2'][1]}")
    else:
        report.problems.append(f"{folder / 'model_index.json'}: no text_encoder_2; SDXL has two text encoders.")
    unet_config = _json(folder / "unet" / "config.json", report) if "unet" in components else None
    if "unet" not in components:
        report.problems.append(f"{folder / 'model_index.json'}: no unet component.")
    elif unet_config is not None:
        embed = unet_config.get("addition_embed_type")
        if embed == "text_time":
            report.layout.append(f"unet addition_embed_type text_time, cross_attention_dim "
                                 f"{unet_config.get('cross_attention_dim')}")
        else:
            report.problems.append(f"{folder / 'unet' / 'config.json'}: addition_embed_type is {embed!r}, not "
                                   "'text_time'; this UNet is not SDXL's.")


def _check_sdxl_single_file(report: VerifyReport, info: WeightsFileInfo | None) -> None:
    if info is None:
        return
    if info.format != "safetensors":
        report.layout.append("layout not checked: a pickle is never opened to read its keys")
        return
    problem = sdxl_single_file_problem(info)
    if problem:
        report.problems.append(problem)
        return
    found = [prefix for prefix in SDXL_SINGLE_FILE_PREFIXES if any(name.startswith(prefix) for name in info.tensor_names)]
    report.layout.append("SDXL checkpoint (" + ", ".join(prefix.rstrip(".") for prefix in found) + ")")


def _check_ip_adapter(report: VerifyReport, info: WeightsFileInfo | None) -> None:
    if info is None or info.format != "safetensors":
        if info is not None:
            report.layout.append("layout not checked: a pickle is never opened to read its keys")
        return
    has_proj = any(name.startswith("image_proj.") for name in info.tensor_names)
    has_layers = any(name.startswith("ip_adapter.") for name in info.tensor_names)
    if has_proj and has_layers:
        report.layout.append("IP-Adapter weights (image_proj, ip_adapter)")
    else:
        report.problems.append(f"{info.path}: not IP-Adapter weights (expected image_proj.* and ip_adapter.* keys).")
    encoder = report.resolved.image_encoder
    if encoder is not None:
        _check_model_folder(report, encoder.local_path, "clip")


# Key markers of the LoRA layouts diffusers loads: its own/PEFT (lora_A/lora_B, lora.down/up) and
# kohya's A1111/ComfyUI files (lora_unet_..., lora_te1_..., .lora_down/.lora_up, alpha).
_LORA_MARKERS = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_down", "lora_up", "lora_unet_", "lora_te")


def _check_lora(report: VerifyReport, info: WeightsFileInfo | None) -> None:
    if info is None or info.format != "safetensors":
        if info is not None:
            report.layout.append("layout not checked: a pickle is never opened to read its keys")
        return
    count = sum(any(marker in name for marker in _LORA_MARKERS) for name in info.tensor_names)
    if count:
        report.layout.append(f"LoRA weights ({count} low-rank tensors)")
    else:
        report.problems.append(f"{info.path}: not LoRA weights (no lora_A/lora_B, lora_down/lora_up keys).")


def _check_video_pipeline(report: VerifyReport, folder: Path) -> None:
    """A video entry is a StableVideoDiffusionPipeline folder (what engines/video.py loads)."""
    index = _json(folder / "model_index.json", report)
    if index is None:
        return
    class_name = str(index.get("_class_name", ""))
    if class_name == "StableVideoDiffusionPipeline":
        report.layout.append(f"pipeline class {class_name}")
    else:
        report.problems.append(f"{folder / 'model_index.json'}: pipeline class is '{class_name or 'missing'}', not "
                               "StableVideoDiffusionPipeline.")


def _check_model_folder(report: VerifyReport, folder: Path, model_type: str) -> None:
    config = _json(folder / "config.json", report)
    if config is None:
        return
    model_kind = str(config.get("model_type", ""))
    if model_type == "clip" and "clip" not in model_kind:
        report.problems.append(f"{folder / 'config.json'}: model_type is '{model_kind}', not a CLIP model.")
        return
    detail = f"{model_type} folder (model_type {model_kind or 'unknown'})"
    if model_type == "text-embedder" and (folder / "modules.json").is_file():
        detail += ", sentence-transformers modules.json"
    report.layout.append(detail)
