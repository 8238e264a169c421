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


def _bytes_to_unicode() -> dict[int, str]:
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
    symbols = list(_bytes_to_unicode().values())
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
    from transformers import CLIPTokenizer

    import inspect

    write_clip_tokenizer_files(folder)
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    # transformers 5 names the arguments vocab/merges; 4.x names them vocab_file/merges_file.
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        return CLIPTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>", model_max_length=77)
    return CLIPTokenizer(vocab_file=vocab, merges_file=merges, pad_token="<|endoftext|>", model_max_length=77)


def tiny_text_encoder_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
                          vocab_size=VOCAB_SIZE, hidden_act="gelu", projection_dim=32)


def build_tiny_sdxl(seed: int = 0):
    """A StableDiffusionXLPipeline with tiny random weights (CPU, float32)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    import tempfile

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=128)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_encoder_config())
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder_config())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp))
        tokenizer_2 = make_tokenizer(Path(tmp))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=scheduler)


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Build and save_pretrained a tiny SDXL pipeline (safetensors) into folder."""
    pipe = build_tiny_sdxl(seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


# ---- IP-Adapter and CLIP ---------------------------------------------------------------------------

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
