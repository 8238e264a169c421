"""A tiny random-weight Shap-E text-to-3D pipeline (diffusers' ShapEPipeline: a prior transformer, a CLIP text
encoder with projection, a Heun scheduler and the NeRF/STF renderer), saved with save_pretrained so tests load
it through the real loading code. The latent is 32 rows of 16: the renderer's four MLP weight matrices
(8x93, 8x8, 8x8, 8x8) are projected from it. No Hub access."""

from __future__ import annotations

from pathlib import Path

LATENT_DIM = 16
HIDDEN = 8


def tiny_shap_e_components() -> dict:
    import torch
    from diffusers import HeunDiscreteScheduler, PriorTransformer
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from tests.tiny_models import VOCAB_SIZE, write_clip_tokenizer_files

    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=LATENT_DIM,
                             num_embeddings=4 * HIDDEN, num_layers=1, clip_embed_dim=2 * LATENT_DIM,
                             time_embed_dim=64, additional_embeddings=0, time_embed_act_fn="gelu",
                             norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=LATENT_DIM, projection_dim=LATENT_DIM, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=VOCAB_SIZE))
    torch.manual_seed(0)
    renderer = ShapERenderer(param_shapes=((HIDDEN, 93), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, HIDDEN)),
                             d_latent=LATENT_DIM, d_hidden=HIDDEN, n_output=12, background=(0.1, 0.1, 0.1))
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    cases, masks = marching_cubes_tables()
    renderer.mesh_decoder.cases.copy_(cases)
    renderer.mesh_decoder.masks.copy_(masks)
    return {"prior": prior, "text_encoder": text_encoder, "shap_e_renderer": renderer, "scheduler": scheduler,
            "tokenizer_files": write_clip_tokenizer_files}


# The renderer's marching-cubes lookup tables are buffers the published checkpoint carries (zeros in a fresh
# model, which makes no triangles). They are derived here for diffusers' numbering: corner = dx + 2*dy + 4*dz
# (set when the field is > 0); edges 0-3 run along x at (y, z) = (0,0), (1,0), (0,1), (1,1); 4-7 along y at
# (x, z) in the same order; 8-11 along z at (x, y). Per face, crossing edges are joined into segments (an
# ambiguous face keeps its inside corners apart), the segments close into loops, each loop is fanned.
_EDGES = ([((0, y, z), (1, y, z)) for z in (0, 1) for y in (0, 1)]
          + [((x, 0, z), (x, 1, z)) for z in (0, 1) for x in (0, 1)]
          + [((x, y, 0), (x, y, 1)) for y in (0, 1) for x in (0, 1)])


def _corner(point) -> int:
    return point[0] + 2 * point[1] + 4 * point[2]


def _config_triangles(config: int) -> list[tuple[int, int, int]]:
    inside = {c for c in range(8) if config >> c & 1}
    crossing = [e for e, (a, b) in enumerate(_EDGES) if (_corner(a) in inside) != (_corner(b) in inside)]
    links: dict[int, list[int]] = {e: [] for e in crossing}
    for axis in range(3):
        for side in (0, 1):
            face = [e for e in crossing if all(p[axis] == side for p in _EDGES[e])]
            if len(face) == 2:
                pairs = [tuple(face)]
            elif len(face) == 4:  # ambiguous: cut off each inside corner of the face
                corners = {p for e in face for p in _EDGES[e] if _corner(p) in inside}
                pairs = [tuple(e for e in face if c in _EDGES[e]) for c in corners]
            else:
                pairs = []
            for a, b in pairs:
                links[a].append(b)
                links[b].append(a)
    triangles, seen = [], set()
    for start in crossing:
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            following = next(e for e in links[current] if e != previous) if previous is not None else links[current][0]
            if following == start:
                break
            loop.append(following)
            seen.add(following)
            previous, current = current, following
        triangles += [(loop[0], loop[i], loop[i + 1]) for i in range(1, len(loop) - 1)]
    return triangles


def marching_cubes_tables():
    import torch

    cases = torch.zeros(256, 5, 3, dtype=torch.long)
    masks = torch.zeros(256, 5, dtype=torch.bool)
    for config in range(256):
        for index, triangle in enumerate(_config_triangles(config)[:5]):
            cases[config, index] = torch.tensor(triangle)
            masks[config, index] = True
    return cases, masks


def save_tiny_shap_e(folder: Path) -> Path:
    from diffusers import ShapEPipeline

    from tests.tiny_models import make_tokenizer, write_clip_tokenizer_files

    components = tiny_shap_e_components()
    components.pop("tokenizer_files")
    tokenizer = make_tokenizer(write_clip_tokenizer_files(folder.parent / f"{folder.name}-tokenizer"))
    ShapEPipeline(tokenizer=tokenizer, **components).save_pretrained(folder)
    return folder


def save_tiny_shap_e_img2img(folder: Path) -> Path:
    """The image-to-3D pipeline (ShapEImg2ImgPipeline): a tiny CLIP vision encoder (32x32, patches of 8: 16
    patch tokens of 24) whose tokens condition the prior (16 tokens + the time token are its additional
    embeddings); the renderer and scheduler are the text pipeline's."""
    import torch
    from diffusers import PriorTransformer, ShapEImg2ImgPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    components = tiny_shap_e_components()
    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=LATENT_DIM,
                             num_embeddings=4 * HIDDEN, num_layers=1, clip_embed_dim=2 * LATENT_DIM,
                             time_embed_dim=64, additional_embeddings=17, time_embed_act_fn="gelu",
                             norm_in_type="layer", embedding_proj_dim=24, embedding_proj_norm_type="layer",
                             encoder_hid_proj_type=None, added_emb_type=None)
    torch.manual_seed(0)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, image_size=32, projection_dim=16, intermediate_size=37,
                                               num_attention_heads=4, num_channels=3, num_hidden_layers=2,
                                               patch_size=8))
    processor = CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_normalize=True, do_resize=True,
                                   resample=3, image_mean=[0.48, 0.46, 0.41], image_std=[0.27, 0.26, 0.28])
    ShapEImg2ImgPipeline(prior=prior, image_encoder=encoder, image_processor=processor,
                         shap_e_renderer=components["shap_e_renderer"],
                         scheduler=components["scheduler"]).save_pretrained(folder)
    return folder
