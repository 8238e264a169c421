"""A tiny random-weight AudioLDM 2 pipeline (diffusers' AudioLDM2Pipeline: a CLAP text/audio model with a
byte-level BPE (RoBERTa) tokenizer built here, a T5 encoder with the tiny unigram tokenizer of the Stable Audio
fixture, the projection model, a GPT-2 that writes 8 embeddings, the two-cross-attention UNet, a mel VAE, a
SpeechT5 HiFi-GAN vocoder and a DDIM scheduler), saved with save_pretrained so tests load it through the real
loading code. The vocoder says 16 kHz with an upsampling of 4 (one mel frame = 0.25 ms) and the VAE halves the
frames: the UNet's 32 latent rows cover 64 frames, 16 ms, the default length; any multiple of 0.5 ms renders.
No Hub access."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from tests.tiny_models import bytes_to_unicode

LOUDER = 3e4
MERGES = ["Ġ t", "r a", "i n", "o n", "Ġ a", "e r"]


def tiny_roberta_tokenizer(folder: Path):
    """A byte-level BPE tokenizer of RoBERTa's shape (specials <s> <pad> </s> <unk> <mask>, every byte, a few
    merges), written as vocab.json + merges.txt and read back by transformers' RobertaTokenizer."""
    from transformers import RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list(bytes_to_unicode().values())
    tokens += [merge.replace(" ", "") for merge in MERGES]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    # transformers 5 names the arguments vocab/merges; 4.x names them vocab_file/merges_file.
    if "vocab" in inspect.signature(RobertaTokenizer.__init__).parameters:
        return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    return RobertaTokenizer(vocab_file=vocab, merges_file=merges, model_max_length=16)


def save_tiny_audioldm2(folder: Path) -> Path:
    import torch
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    from tests.tiny_stable_audio import tiny_t5_tokenizer

    tokenizer = tiny_roberta_tokenizer(folder.parent / f"{folder.name}-roberta")
    torch.manual_seed(0)
    unet = AudioLDM2UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                         sample_size=32, in_channels=4, out_channels=4,
                                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                         attention_head_dim=4, cross_attention_dim=([None, 16, 16], [None, 16, 16]))
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4)
    torch.manual_seed(0)
    text_config = ClapTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16, intermediate_size=37,
                                 layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2,
                                 vocab_size=len(tokenizer), projection_dim=16, max_position_embeddings=32)
    audio_config = ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37,
                                   layer_norm_eps=1e-05, depths=[2, 2], num_attention_heads=[2, 2],
                                   num_hidden_layers=2, hidden_size=192, projection_dim=16, patch_size=2,
                                   patch_stride=2, patch_embed_input_channels=4)
    text_encoder = ClapModel(ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                                                                projection_dim=16))
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=2,
                                             relative_attention_num_buckets=8, decoder_start_token_id=0,
                                             pad_token_id=0, eos_token_id=1))
    torch.manual_seed(0)
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=64, n_ctx=64,
                                                n_positions=64, bos_token_id=0, eos_token_id=0))
    language_model.config.max_new_tokens = 8
    torch.manual_seed(0)
    projection = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=16, langauge_model_dim=16)
    torch.manual_seed(0)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16,
                                                    upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                                                    resblock_kernel_sizes=[3, 7],
                                                    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
                                                    normalize_before=False))
    with torch.no_grad():  # random weights whisper (~1e-6); louder, the sound survives 16-bit FLAC
        vocoder.conv_post.weight.mul_(LOUDER)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    AudioLDM2Pipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, projection_model=projection,
                      language_model=language_model, tokenizer=tokenizer, tokenizer_2=tiny_t5_tokenizer(),
                      feature_extractor=ClapFeatureExtractor(), unet=unet, scheduler=scheduler,
                      vocoder=vocoder).save_pretrained(folder)
    return folder
