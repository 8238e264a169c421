"""PNG metadata of other tools: A1111 `parameters`, ComfyUI `prompt`/`workflow`, InvokeAI `invokeai_metadata`.

Every PNG is built here with Pillow's PngInfo, with chunk contents written the way each tool writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from echo_os.artifacts.pnginfo import A1111_SAMPLER_NAMES, a1111_parameters
from echo_os.memory.pngmeta import (
    ImportedMeta,
    parse_a1111_parameters,
    parse_text_chunks,
    read_png_metadata,
)


def png_with(path: Path, chunks: dict[str, str], size: tuple[int, int] = (64, 48), itxt: bool = False) -> Path:
    info = PngInfo()
    for key, value in chunks.items():
        if itxt:
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    Image.new("RGB", size, (40, 80, 120)).save(path, pnginfo=info)
    return path


# -- A1111 -------------------------------------------------------------------------------------------

A1111_WEBUI = (
    "masterpiece, lighthouse on a cliff, (stormy night:1.2), <lora:add_detail:0.6>\n"
    "crashing waves, volumetric light\n"
    "Negative prompt: blurry, lowres, (worst quality:1.4)\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
    "Size: 1216x832, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Denoising strength: 0.4, Hires upscale: 1.5, '
    'TI hashes: "bad_prompt: f9dc5a5e1d2a, easynegative: c74b4e810b03", Version: v1.9.4'
)


def test_a1111_webui_text(tmp_path: Path) -> None:
    meta = read_png_metadata(png_with(tmp_path / "a.png", {"parameters": A1111_WEBUI}))
    assert meta.source == "a1111"
    assert meta.prompt == ("masterpiece, lighthouse on a cliff, (stormy night:1.2), <lora:add_detail:0.6>\n"
                           "crashing waves, volumetric light")
    assert meta.negative == "blurry, lowres, (worst quality:1.4)"
    assert (meta.steps, meta.sampler, meta.scheduler, meta.cfg, meta.seed) == (30, "DPM++ 2M", "Karras", 6.5, 3141592653)
    assert (meta.width, meta.height, meta.model, meta.model_hash) == (1216, 832, "sd_xl_base_1.0", "31e35c80fc")
    assert meta.extra["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert meta.extra["TI hashes"] == "bad_prompt: f9dc5a5e1d2a, easynegative: c74b4e810b03"
    assert meta.extra["Version"] == "v1.9.4" and meta.extra["Denoising strength"] == "0.4"
    assert meta.echo_scheduler() == "dpmpp_2m_karras"
    assert meta.raw == {"parameters": A1111_WEBUI} and meta.warnings == ()


def test_a1111_writer_round_trips_exactly(tmp_path: Path) -> None:
    fields = dict(
        prompt='a "quoted" lighthouse, storm: night\nsecond line, 50% fog',
        negative="blurry, lowres",
        steps=28, sampler=A1111_SAMPLER_NAMES["dpmpp_2m_karras"], cfg=7.25, seed=4294967295,
        width=1024, height=768, model="juggernautXL: v9, lightning",
    )
    text = a1111_parameters(**fields, extra={"Version": "echo-os 0.1.0", "Lora hashes": "a: 1, b: 2"})
    assert text.splitlines()[-1].startswith("Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7.25, Seed: 4294967295")
    meta = read_png_metadata(png_with(tmp_path / "r.png", {"parameters": text}, itxt=True))
    assert (meta.prompt, meta.negative, meta.steps, meta.sampler, meta.cfg, meta.seed, meta.width, meta.height,
            meta.model) == tuple(fields.values())
    assert meta.extra == {"Version": "echo-os 0.1.0", "Lora hashes": "a: 1, b: 2"}
    assert meta.echo_scheduler() == "dpmpp_2m_karras"


@pytest.mark.parametrize("cfg", [7, 7.0, 4.5, 12.125])
def test_a1111_writer_cfg_and_no_negative(cfg: float) -> None:
    text = a1111_parameters("a cat", None, steps=20, sampler="Euler a", cfg=cfg, seed=1, width=512, height=512,
                            model=None)
    assert "Negative prompt" not in text and "Model:" not in text
    meta = parse_a1111_parameters(text)
    assert meta.cfg == float(cfg) and meta.negative is None and meta.model is None
    assert meta.echo_scheduler() == "euler_a"


def test_a1111_prompt_only_and_multiline_negative() -> None:
    assert parse_a1111_parameters("just a prompt, with commas").prompt == "just a prompt, with commas"
    meta = parse_a1111_parameters("p\nNegative prompt: bad\nworse\nSteps: 5, Sampler: Euler, Seed: 9")
    assert (meta.prompt, meta.negative, meta.steps, meta.seed) == ("p", "bad\nworse", 5, 9)


# -- ComfyUI -----------------------------------------------------------------------------------------

# The default text-to-image graph in API format, as ComfyUI's SaveImage writes it into `prompt`.
COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {
        "text": "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}

COMFY_WORKFLOW = {
    "last_node_id": 9, "last_link_id": 9, "version": 0.4,
    "nodes": [
        {"id": 7, "type": "CLIPTextEncode", "order": 3, "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}],
         "widgets_values": ["text, watermark"]},
        {"id": 6, "type": "CLIPTextEncode", "order": 2, "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}],
         "widgets_values": ["a lighthouse in a storm, night"]},
        {"id": 5, "type": "EmptyLatentImage", "order": 1, "inputs": [],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}], "widgets_values": [832, 1216, 1]},
        {"id": 3, "type": "KSampler", "order": 4, "inputs": [
            {"name": "model", "type": "MODEL", "link": 1}, {"name": "positive", "type": "CONDITIONING", "link": 4},
            {"name": "negative", "type": "CONDITIONING", "link": 6},
            {"name": "latent_image", "type": "LATENT", "link": 2}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7]}],
         "widgets_values": [42, "fixed", 25, 6.5, "dpmpp_2m", "karras", 1]},
        {"id": 4, "type": "CheckpointLoaderSimple", "order": 0, "inputs": [],
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]}], "widgets_values": ["juggernautXL_v9.safetensors"]},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
              [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"]],
}


def test_comfyui_prompt_chunk(tmp_path: Path) -> None:
    chunks = {"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)}
    meta = read_png_metadata(png_with(tmp_path / "c.png", chunks))
    assert meta.source == "comfyui"
    assert meta.prompt == "beautiful scenery nature glass bottle landscape, purple galaxy bottle,"
    assert meta.negative == "text, watermark"
    assert (meta.seed, meta.steps, meta.cfg, meta.sampler, meta.scheduler) == (156680208700286, 20, 8.0, "euler", "normal")
    assert (meta.width, meta.height, meta.model) == (1024, 1024, "sd_xl_base_1.0.safetensors")
    assert set(meta.raw) == {"prompt", "workflow"}


def test_comfyui_sdxl_graph_with_lora_primitive_seed_and_refiner() -> None:
    graph = {
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl_base.safetensors"}},
        "11": {"class_type": "LoraLoader", "inputs": {"model": ["10", 0], "clip": ["10", 1],
                                                      "lora_name": "detail.safetensors", "strength_model": 0.7}},
        "12": {"class_type": "PrimitiveNode", "inputs": {"value": 777}},
        "13": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "a red sports car", "text_l": "a red sports car",
                                                              "width": 1024, "height": 1024, "clip": ["11", 1]}},
        "14": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "cartoon", "text_l": "cartoon", "clip": ["11", 1]}},
        "15": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["13", 0], "negative": ["14", 0],
                                                                   "strength": 0.5}},
        "16": {"class_type": "EmptyLatentImage", "inputs": {"width": 1344, "height": 768, "batch_size": 1}},
        # The refiner pass comes first by node id but is fed by the base sampler, not an empty latent.
        "2": {"class_type": "KSamplerAdvanced", "inputs": {
            "noise_seed": 5, "steps": 10, "cfg": 5, "sampler_name": "euler", "scheduler": "normal",
            "model": ["10", 0], "positive": ["15", 0], "negative": ["15", 1], "latent_image": ["17", 0]}},
        "17": {"class_type": "KSampler", "inputs": {
            "seed": ["12", 0], "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1, "model": ["11", 0], "positive": ["15", 0], "negative": ["15", 1], "latent_image": ["16", 0]}},
    }
    meta = parse_text_chunks({"prompt": json.dumps(graph)})
    assert (meta.prompt, meta.negative) == ("a red sports car", "cartoon")
    assert (meta.seed, meta.steps, meta.cfg, meta.sampler, meta.scheduler) == (777, 30, 7.5, "dpmpp_2m", "karras")
    assert (meta.width, meta.height, meta.model) == (1344, 768, "sdxl_base.safetensors")
    assert meta.echo_scheduler() == "dpmpp_2m_karras"


def test_comfyui_workflow_only(tmp_path: Path) -> None:
    meta = read_png_metadata(png_with(tmp_path / "w.png", {"workflow": json.dumps(COMFY_WORKFLOW)}))
    assert meta.source == "comfyui"
    assert (meta.prompt, meta.negative) == ("a lighthouse in a storm, night", "text, watermark")
    assert (meta.seed, meta.steps, meta.cfg, meta.sampler, meta.scheduler) == (42, 25, 6.5, "dpmpp_2m", "karras")
    assert (meta.width, meta.height, meta.model) == (832, 1216, "juggernautXL_v9.safetensors")


# -- InvokeAI ----------------------------------------------------------------------------------------

INVOKE_4 = {
    "generation_mode": "sdxl_txt2img", "positive_prompt": "a cat sleeping on a sofa, cozy lamp light",
    "negative_prompt": "deformed", "width": 1024, "height": 1024, "seed": 2004811046, "rand_device": "cpu",
    "cfg_scale": 7.5, "cfg_rescale_multiplier": 0, "steps": 30, "scheduler": "dpmpp_2m_k",
    "positive_style_prompt": "", "negative_style_prompt": "",
    "model": {"key": "2bb4b4a3-b7c4", "hash": "blake3:7c0b63c", "name": "Juggernaut XL v9", "base": "sdxl",
              "type": "main"},
    "app_version": "4.2.9",
}


def test_invokeai_metadata(tmp_path: Path) -> None:
    chunks = {"invokeai_metadata": json.dumps(INVOKE_4), "invokeai_graph": json.dumps({"id": "graph"})}
    meta = read_png_metadata(png_with(tmp_path / "i.png", chunks))
    assert meta.source == "invokeai"
    assert (meta.prompt, meta.negative) == ("a cat sleeping on a sofa, cozy lamp light", "deformed")
    assert (meta.seed, meta.steps, meta.cfg, meta.sampler) == (2004811046, 30, 7.5, "dpmpp_2m_k")
    assert (meta.width, meta.height, meta.model, meta.model_hash) == (1024, 1024, "Juggernaut XL v9", "blake3:7c0b63c")
    assert meta.extra["app_version"] == "4.2.9" and meta.echo_scheduler() == "dpmpp_2m_karras"


def test_invokeai_3_model_field() -> None:
    old = {**INVOKE_4, "model": {"model_name": "stable-diffusion-xl-base-1-0", "base_model": "sdxl"}}
    assert parse_text_chunks({"invokeai_metadata": json.dumps(old)}).model == "stable-diffusion-xl-base-1-0"


# -- tolerance ---------------------------------------------------------------------------------------


def test_malformed_chunk_is_reported_and_the_next_format_is_used(tmp_path: Path) -> None:
    chunks = {"prompt": '{"3": {"class_type": "KSampler", "inputs": {', "parameters": "a dog\nSteps: 4, Sampler: Euler, Seed: 1"}
    meta = read_png_metadata(png_with(tmp_path / "m.png", chunks))
    assert meta.source == "a1111" and meta.prompt == "a dog"
    assert len(meta.warnings) == 1 and "'prompt'" in meta.warnings[0]
    assert (meta.width, meta.height) == (64, 48)  # no Size: taken from the image


def test_png_without_metadata_is_unknown(tmp_path: Path) -> None:
    meta = read_png_metadata(png_with(tmp_path / "plain.png", {}, size=(30, 20)))
    assert meta == ImportedMeta(source="unknown", width=30, height=20)
    weird = parse_text_chunks({"invokeai_metadata": "[1, 2]", "Software": "GIMP"})
    assert weird.source == "unknown" and weird.warnings and weird.raw["Software"] == "GIMP"


def test_fooocus_json_parameters() -> None:
    fooocus = {"prompt": "a red sports car", "negative_prompt": "", "resolution": "(1152, 896)",
               "guidance_scale": 4, "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "12345",
               "steps": 30, "base_model": "juggernautXL_v8Rundiffusion.safetensors"}
    meta = parse_text_chunks({"parameters": json.dumps(fooocus), "fooocus_scheme": "fooocus"})
    assert meta.source == "fooocus" and meta.prompt == "a red sports car" and meta.negative is None
    assert (meta.seed, meta.steps, meta.cfg, meta.width, meta.height) == (12345, 30, 4.0, 1152, 896)


def test_not_an_image_raises_oserror(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"not a png")
    with pytest.raises(OSError):
        read_png_metadata(path)
