"""A tiny random-weight Stable Audio pipeline (diffusers' StableAudioPipeline: an Oobleck VAE, a T5 encoder with
a unigram fast tokenizer built here, the number-conditioner projection, a DiT and the scheduler Stable Audio
Open 1.0 ships: CosineDPMSolverMultistepScheduler with its published scheduler_config.json values,
SCHEDULER_CONFIG), saved with save_pretrained so tests load it through the real loading code. The VAE says 1000 Hz and
the DiT covers 256 latent frames (hop 2): up to 0.512 s of stereo. No Hub access."""

from __future__ import annotations

from pathlib import Path

# stabilityai/stable-audio-open-1.0 scheduler/scheduler_config.json (the values; _class_name is the class)
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "prediction_type": "v_prediction", "sigma_data": 1.0,
                    "sigma_max": 500.0, "sigma_min": 0.3, "sigma_schedule": "exponential", "solver_order": 2,
                    "solver_type": "midpoint", "final_sigmas_type": "zero", "euler_at_final": False,
                    "lower_order_final": True, "rho": 7.0}
WORDS = ["rain", "on", "a", "tin", "roof", "distant", "thunder", "wind", "sea", "quiet", "room", "tone", "ambience"]


def tiny_t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    # a unigram vocabulary (the model T5's tokenizer is), whole words only
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(word, -1.0) for word in WORDS]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           model_max_length=16, extra_ids=0)


def save_tiny_stable_audio(folder: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
    )
    from diffusers.pipelines.stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = StableAudioDiTModel(sample_size=256, in_channels=3, num_layers=2, attention_head_dim=4,
                                      num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4,
                                      time_proj_dim=8, global_states_input_dim=8, cross_attention_input_dim=4)
    torch.manual_seed(0)
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[1, 2], decoder_channels=3,
                             decoder_input_channels=3, audio_channels=2, channel_multiples=[2, 4], sampling_rate=1000)
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                           relative_attention_num_buckets=8, decoder_start_token_id=0,
                                           pad_token_id=0, eos_token_id=1))
    torch.manual_seed(0)
    projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=4, min_value=0, max_value=32)
    scheduler = CosineDPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection,
                        tokenizer=tiny_t5_tokenizer(), transformer=transformer,
                        scheduler=scheduler).save_pretrained(folder)
    return folder
