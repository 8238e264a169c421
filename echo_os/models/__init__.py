"""The model registry: models.toml parsing, resolving weights offline, checking and hashing them.

Light to import (no torch, no huggingface_hub): the CLI lists and checks models without loading any.
How the engine uses it, in order:

    registry = load_registry(settings)
    resolved = registry.resolve(name)            # offline; ModelError when the weights are not here
    check_loadable(resolved)                     # every weights file readable and not a refused pickle
    info = model_info(settings, resolved)        # name, source@commit, kind, weights sha256 (cached)
"""

from echo_os.models.hashing import file_sha256, model_info, sha256_cache_path, weights_sha256
from echo_os.models.pull import pull_model, select_pull_files
from echo_os.models.registry import (
    DEFAULT_MODELS_TOML,
    MODEL_TYPES,
    ModelEntry,
    ModelRegistry,
    load_registry,
    parse_models_toml,
    write_model_entry,
)
from echo_os.models.resolve import (
    ResolvedModel,
    ResolveError,
    check_loadable,
    hf_cache_dir,
    hf_snapshot,
    resolve_model,
)
from echo_os.models.verify import VerifyReport, verify_model
from echo_os.models.weights import (
    WeightsFileInfo,
    check_weights_file,
    detect_format,
    read_safetensors_header,
)

__all__ = [
    "DEFAULT_MODELS_TOML",
    "MODEL_TYPES",
    "ModelEntry",
    "ModelRegistry",
    "ResolveError",
    "ResolvedModel",
    "VerifyReport",
    "WeightsFileInfo",
    "check_loadable",
    "check_weights_file",
    "detect_format",
    "file_sha256",
    "hf_cache_dir",
    "hf_snapshot",
    "load_registry",
    "model_info",
    "parse_models_toml",
    "pull_model",
    "read_safetensors_header",
    "resolve_model",
    "select_pull_files",
    "sha256_cache_path",
    "verify_model",
    "weights_sha256",
    "write_model_entry",
]
