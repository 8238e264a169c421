"""Tiny random-weight models for tests and CPU benchmarks, built in-process, never downloaded.

The shapes follow diffusers' own SDXL pipeline tests (a UNet with block_out_channels (32, 64), CLIP text
encoders of hidden size 32). The tokenizer is a real CLIPTokenizer over a byte-level vocabulary written
here, so nothing is fetched from the Hub. Outputs are noise; the code path is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 1000
MERGES = ["t h", "th e</w>", "i n", "a n", "e r", "o n", "r e", "a r", "l i", "g h", "s t", "o r"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (the published algorithm)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer_files(folder: Path) -> Path:
    """vocab.json + merges.txt for a byte-level CLIP BPE with a few merges."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    for merge in MERGES:
        merged = merge.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) < VOCAB_SIZE
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    return folder


def make_tokenizer(folder: Path):
    import inspect

    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    # transformers 5 names the arguments vocab/merges; 4.x names them vocab_file/merges_file.
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        return CLIPTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>", model_max_length=77)
    return CLIPTokenizer(vocab_file=vocab, merges_file=merges, pad_token="<|endoftext|>", model_max_length=77)


def tiny_text_encoder_config(hidden_size: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=hidden_size, intermediate_size=37,
                          layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
                          vocab_size=VOCAB_SIZE, hidden_act="gelu", projection_dim=32)


def build_tiny_sdxl(seed: int = 0, text_encoder_2_hidden: int = 32):
    """A StableDiffusionXLPipeline with tiny random weights (CPU, float32).

    text_encoder_2_hidden: the second (OpenCLIP) encoder's width. A single-file checkpoint needs it to
    differ from the first encoder's, as it does in SDXL (768 and 1280): diffusers tells the two apart by it.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=32 + text_encoder_2_hidden, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=128)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_encoder_config())
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder_config(text_encoder_2_hidden))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
        tokenizer_2 = make_tokenizer(Path(tmp))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=scheduler)


def save_tiny_sdxl(folder: Path, seed: int = 0, text_encoder_2_hidden: int = 32) -> Path:
    """Build and save_pretrained a tiny SDXL pipeline (safetensors) into folder."""
    pipe = build_tiny_sdxl(seed, text_encoder_2_hidden)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


# ---- IP-Adapter and CLIP ---------------------------------------------------------------------------

def make_tiny_workspace(home: Path, model_folder: Path) -> Path:
    """Make the workspace folder `home` with a models.toml that names the tiny SDXL in `model_folder` `tiny`
    (the CPU benchmarks' set-up); returns `home`."""
    home.mkdir()
    (home / "models.toml").write_text(f'[models.tiny]\ntype = "sdxl"\npath = "{model_folder.as_posix()}"\n')
    return home


TINY_IP_ADAPTER_FILE = "ip-adapter_tiny.safetensors"


def tiny_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                            num_attention_heads=4, image_size=32, patch_size=4)


def save_tiny_ip_adapter(folder: Path, unet_folder: Path, seed: int = 0) -> Path:
    """An IP-Adapter in diffusers' format sized for the tiny UNet, with its tiny image encoder beside it.

    folder/ip-adapter_tiny.safetensors holds flattened `image_proj.*` (ImageProjection: 4 tokens of the
    UNet's cross_attention_dim from a 32-d image embedding) and `ip_adapter.N.to_k_ip/to_v_ip` keys
    numbered 1, 3, 5, ... over the UNet's cross-attention layers, as the published adapters are.
    folder/image_encoder is a CLIPVisionModelWithProjection (hidden 32, projection 32).
    """
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    folder.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(str(unet_folder), local_files_only=True)
    cross, blocks = unet.config.cross_attention_dim, unet.config.block_out_channels
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cross, 32, generator=generator) * 0.3,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=generator) * 0.3
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=generator) * 0.3
        key_id += 2
    save_file(tensors, str(folder / TINY_IP_ADAPTER_FILE))
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(tiny_vision_config()).save_pretrained(str(folder / "image_encoder"))
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel (vision 32x32 images), its tokenizer and image processor, saved like a real
    one (save_pretrained): what Echo Memory's image search and the continuity report load."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(folder).save_pretrained(str(folder))
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=VOCAB_SIZE, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    vision = tiny_vision_config().to_dict()
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


# ---- single-file (original SGM / A1111 / ComfyUI layout) checkpoint -----------------------------------------
#
# What `file = "x.safetensors"` entries point at: one file with every component under the original
# Stability AI names (model.diffusion_model.*, first_stage_model.*, conditioner.embedders.0.transformer.*,
# conditioner.embedders.1.model.*). diffusers only converts that layout *to* its own; this writes the
# other direction for a tiny pipeline, so from_single_file runs on a real file in the tests.

_UNET_RESNET_NAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                      ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION_NAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, names) -> str:
    for ours, theirs in names:
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    return rest


def _unet_to_original(state: dict, config: dict) -> dict:
    per_block = config["layers_per_block"] + 1
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        head = ".".join(parts[:2])
        if head in fixed:
            name = f"{fixed[head]}.{'.'.join(parts[2:])}"
        elif parts[0] in fixed:
            name = f"{fixed[parts[0]]}.{'.'.join(parts[1:])}"
        elif parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":  # the conv after the block's resnets
                name = f"input_blocks.{1 + block * per_block + per_block - 1}.0.op.{'.'.join(parts[5:])}"
            else:
                slot = {"resnets": 0, "attentions": 1}[kind]
                rest = _rename(rest, _UNET_RESNET_NAMES) if kind == "resnets" else rest
                name = f"input_blocks.{1 + block * per_block + index}.{slot}.{rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                name = f"middle_block.{2 * index}.{_rename(rest, _UNET_RESNET_NAMES)}"
            else:
                name = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":  # after the last resnet (and its attention, when the block has one)
                has_attention = any(k.startswith(f"up_blocks.{block}.attentions.") for k in state)
                name = f"output_blocks.{block * per_block + per_block - 1}.{2 if has_attention else 1}." \
                       f"{'.'.join(parts[4:])}"
            else:
                slot = {"resnets": 0, "attentions": 1}[kind]
                rest = _rename(rest, _UNET_RESNET_NAMES) if kind == "resnets" else rest
                name = f"output_blocks.{block * per_block + index}.{slot}.{rest}"
        else:
            raise KeyError(f"no original name for UNet key {key}")
        out["model.diffusion_model." + name] = tensor
    return out


def _vae_to_original(state: dict, config: dict) -> dict:
    ups = len(config["up_block_types"])
    out = {}
    for key, tensor in state.items():
        parts = key.split(".")
        side = parts[0]
        if parts[1] in ("down_blocks", "up_blocks"):
            block = int(parts[2]) if parts[1] == "down_blocks" else ups - 1 - int(parts[2])
            where = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] in ("downsamplers", "upsamplers"):
                name = f"{side}.{where}.{block}.{where}sample.{'.'.join(parts[5:])}"
            else:
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                name = f"{side}.{where}.{block}.block.{parts[4]}.{rest}"
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            name = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
        elif parts[1] == "mid_block":  # attentions.0: linear layers become 1x1 convs
            name = f"{side}.mid.attn_1.{_rename('.'.join(parts[4:]), _VAE_ATTENTION_NAMES)}"
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        elif side in ("quant_conv", "post_quant_conv"):
            name = key
        else:
            name = key.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + name] = tensor
    return out


def _open_clip_to_original(state: dict) -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP names (q, k and v fused into in_proj)."""
    import torch

    prefix = "conditioner.embedders.1.model."
    out, fused = {}, {}
    for key, tensor in state.items():
        key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = tensor
        elif key.startswith("text_model.encoder.layers."):
            parts = key.split(".")
            layer, rest = parts[3], ".".join(parts[4:])
            base = f"{prefix}transformer.resblocks.{layer}."
            if rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = rest.rsplit(".", 1)[1]
                fused.setdefault(f"{base}attn.in_proj_{kind}", {})[rest.split(".")[1][0]] = tensor
                continue
            rest = (rest.replace("self_attn.", "attn.").replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
                    .replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
            out[base + rest] = tensor
    for name, qkv in fused.items():
        out[name] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def save_tiny_sdxl_single_file(folder: Path, path: Path) -> Path:
    """The pipeline saved in `folder` (save_tiny_sdxl) as one original-layout safetensors file at `path`."""
    from safetensors.torch import load_file, save_file

    def component(name: str) -> tuple[dict, dict]:
        files = sorted((folder / name).glob("*.safetensors"))
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
        config_file = folder / name / "config.json"
        return state, json.loads(config_file.read_text()) if config_file.is_file() else {}

    unet, unet_config = component("unet")
    vae, vae_config = component("vae")
    clip_l, _ = component("text_encoder")
    clip_g, _ = component("text_encoder_2")
    checkpoint = {**_unet_to_original(unet, unet_config), **_vae_to_original(vae, vae_config),
                  **_open_clip_to_original(clip_g)}
    for key, tensor in clip_l.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["conditioner.embedders.0.transformer." + key] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))
    return path


# ---- LoRA -------------------------------------------------------------------------------------------------

def save_tiny_lora(unet_folder: Path, path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA (rank `rank`, on the attention projections) for the UNet saved in `unet_folder`,
    written with the pipeline's save_lora_weights as diffusers and A1111-era tools load it. Its up
    weights are not zero (a fresh LoRA would change nothing), so applying it visibly changes images."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(unet_folder))
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(str(path.parent), unet_lora_layers=layers, weight_name=path.name)
    return path
