"""all-MiniLM-L6-v2 without torch: the same BERT forward pass in numpy, for text queries that must answer fast.

Importing sentence-transformers pulls torch, transformers and scikit-learn (seconds on 2 cores) for what is
six small transformer layers. This module runs them with numpy (BLAS matmuls), the `tokenizers` library
(the Rust tokenizer sentence-transformers' own fast tokenizer is built from, reading the same
tokenizer.json) and safetensors' numpy loader over the same model.safetensors, then applies the model's
own pooling (mean over real tokens) and L2 normalisation. Vectors equal sentence-transformers' to 1e-5 in
cosine (tests/test_minilm_numpy.py checks it against the real library).

The contract is that of sentence-transformers' "Transformer -> Pooling(mean) -> Normalize" stack for a
BertModel: absolute positions, token type 0, exact (erf) GELU, LayerNorm eps from config.json, inputs
truncated to max_seq_length from sentence_bert_config.json. A model folder with another shape is refused
(MiniLMUnsupported) so the caller falls back to sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_BATCH = 32


class MiniLMUnsupported(Exception):
    """The folder is not a mean-pooled, normalised BertModel this module can run exactly."""


def _erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7): numpy has no erf, and scipy's
    import would cost what this module saves."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


class NumpyMiniLM:
    """A sentence-transformers BERT text model (mean pooling, normalised) run with numpy."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = _read_json(folder / "config.json")
        pooling = _read_json(folder / "1_Pooling" / "config.json")
        modules = [module.get("type", "") for module in _read_json_list(folder / "modules.json")]
        if (config.get("model_type") != "bert" or config.get("hidden_act") != "gelu"
                or config.get("position_embedding_type", "absolute") != "absolute"
                or not pooling.get("pooling_mode_mean_tokens")
                or any(pooling.get(key) for key in ("pooling_mode_cls_token", "pooling_mode_max_tokens",
                                                    "pooling_mode_mean_sqrt_len_tokens"))
                or not any(kind.endswith("Normalize") for kind in modules)
                or not (folder / "tokenizer.json").exists() or not (folder / "model.safetensors").exists()):
            raise MiniLMUnsupported(f"{folder} is not a mean-pooled, normalised BertModel with tokenizer.json")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        max_length = int(_read_json(folder / "sentence_bert_config.json").get("max_seq_length", 256))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))
        weights = load_file(str(folder / "model.safetensors"))
        # Linear weights transposed once into C order: x2d @ W.T as one BLAS gemm per projection.
        self.w = {name.removeprefix("bert."): np.ascontiguousarray(value.T if name.endswith("dense.weight") or
                                                                   name.endswith(("query.weight", "key.weight",
                                                                                  "value.weight")) else value,
                                                                   dtype=np.float32)
                  for name, value in weights.items()}
        self.dim = int(config["hidden_size"])

    def _linear(self, x2d: np.ndarray, name: str) -> np.ndarray:
        # 2-D operands: numpy hands a 2-D matmul to BLAS, a stacked 3-D one it may loop over itself.
        return x2d @ self.w[name + ".weight"] + self.w[name + ".bias"]

    def _layer(self, x: np.ndarray, additive_mask: np.ndarray, index: int) -> np.ndarray:
        """One encoder layer on x (batch*length, dim); additive_mask is (batch, 1, 1, length)."""
        p = f"encoder.layer.{index}."
        batch, length = additive_mask.shape[0], additive_mask.shape[-1]
        dim = x.shape[-1]
        head = dim // self.heads

        def project(name: str) -> np.ndarray:
            out = self._linear(x, p + f"attention.self.{name}")
            return out.reshape(batch, length, self.heads, head).transpose(0, 2, 1, 3)

        q, k, v = project("query"), project("key"), project("value")
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head) + additive_mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, dim)
        attended = self._linear(context, p + "attention.output.dense")
        x = _layer_norm(x + attended, self.w[p + "attention.output.LayerNorm.weight"],
                        self.w[p + "attention.output.LayerNorm.bias"], self.eps)
        hidden = _gelu(self._linear(x, p + "intermediate.dense"))
        out = self._linear(hidden, p + "output.dense")
        return _layer_norm(x + out, self.w[p + "output.LayerNorm.weight"], self.w[p + "output.LayerNorm.bias"],
                           self.eps)

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        additive_mask = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        x = x.reshape(-1, x.shape[-1])
        for index in range(self.layers):
            x = self._layer(x, additive_mask, index)
        x = x.reshape(ids.shape[0], ids.shape[1], -1)
        pooled = (x * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 rows, one per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._encode_batch(texts[start:start + _BATCH]) for start in range(0, len(texts), _BATCH)]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _read_json_list(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
