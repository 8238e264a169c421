"""benchmarks/gpu_throughput.py end to end on CPU, with a tiny SDXL (tests/data/tiny_sdxl) at 64x64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import load_gpu_harness

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_sdxl"
FULL = REPO / "benchmarks" / "sdxl"

harness = load_gpu_harness()

RESULT_FIELDS = ("images_per_min", "s_per_image", "call_latency_s", "first_call_s", "flops_per_image",
                 "tflops", "peak_share", "peak_memory_bytes", "drift_max", "drift_mean", "within_tolerance")


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--device", "cpu", "--config-dir", str(TINY), "--sizes", "64x64", "--steps", "2",
            "--min-images", "1", "--min-batches", "1", "--peak-seconds", "0.05", "--quiet",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run.json"), *extra]


def test_tokenizer_has_clip_vocabulary_and_length(tmp_path):
    from transformers import CLIPTokenizer

    folder = harness.write_clip_tokenizer(tmp_path / "tok", vocab_size=49408, max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(tokenizer) == 49408
    ids = tokenizer("a lighthouse at dusk", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == 49407 == max(ids)  # the text encoder pools at the highest id
    long = tokenizer("word " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77


@pytest.mark.slow  # 47 s on 2 cores; test_counted_flops_match_the_sdxl_table and the CUDA profile tests cover the parts
def test_harness_end_to_end_writes_every_field(tmp_path):
    output = harness.main(tiny_args(tmp_path, "--variants", "plain,bf16,sdpa-efficient,vae",
                                    "--batch-sizes", "1,2"))
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["results"] == json.loads(json.dumps(output["results"], default=str))
    for key in ("date", "machine", "versions", "command", "matmul_peak_tflops", "flops", "results", "summary"):
        assert key in saved, key
    assert saved["versions"]["torch"] and saved["versions"]["diffusers"]
    assert "gpu_throughput.py" in saved["command"]
    assert set(saved["matmul_peak_tflops"]) == {"float32", "bfloat16"}

    rows = {(r["variant"], r["batch_size"]): r for r in saved["results"]}
    assert set(rows) == {("plain", 1), ("bf16", 1), ("bf16", 2), ("sdpa-efficient", 1), ("vae", 1), ("vae", 2)}
    skipped = rows[("sdpa-efficient", 1)]
    assert skipped["status"] == "skipped" and "efficient" in skipped["reason"]
    for key, row in rows.items():
        if row["status"] != "ok":
            continue
        for name in RESULT_FIELDS:
            assert row[name] is not None, (key, name)
        assert row["images"] >= 1 and row["images_per_min"] > 0
    assert rows[("plain", 1)]["profile"]["dtype"] == "float32"  # fp16 is for CUDA
    assert rows[("bf16", 2)]["images"] == 2

    # Exact variants stay within bf16 tolerance of the bf16 batch-1 images of the same seeds.
    tolerance = harness.DEFAULT_DRIFT_TOL
    assert rows[("bf16", 1)]["drift_max"] == 0.0
    for key in (("bf16", 2), ("vae", 2)):
        assert rows[key]["drift_max"] <= tolerance, key
        assert rows[key]["within_tolerance"] is True
    assert "bf16 batch 1" in rows[("bf16", 2)]["drift_reference"]
    assert saved["summary"]["best_exact"]["images_per_min"] > 0
    assert "speedup_vs_plain" in saved["summary"]

    # FLOPs per image: 2 steps x (2 x UNet) + decode + 2 prompt encodings.
    counts = saved["flops"]["64x64"]
    expected = 2 * 2 * counts["unet_forward"] + counts["vae_decode"] + 2 * counts["text_encoders_per_prompt"]
    assert rows[("bf16", 1)]["flops_per_image"] == expected
    assert rows[("vae", 1)]["flops_per_image"] == counts["vae_decode"]


def test_table_from_saved_runs(tmp_path, capsys):
    run = {"results": [
        {"variant": "bf16", "size": "64x64", "batch_size": 1, "status": "ok", "reason": "", "images_per_min": 10.0,
         "s_per_image": 6.0, "call_latency_s": 6.0, "tflops": 1.5, "peak_share": 0.5, "peak_memory_bytes": 2**30,
         "compile_s": None, "drift_max": 0.0, "drift_mean": 0.0, "within_tolerance": True, "image_changing": False},
        {"variant": "default-cuda", "size": "64x64", "batch_size": 16, "status": "skipped",
         "reason": "estimated 900 s > 100 s left of --time-budget"},
    ]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    harness.main(["--table", str(path)])
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| variant | size | batch | img/min")
    assert "| bf16 | 64x64 | 1 | 10.00 |" in table[2]
    assert "skipped: estimated 900 s" in table[3]


def test_time_budget_skips_and_says_so(tmp_path):
    output = harness.main(tiny_args(tmp_path, "--variants", "bf16,vae", "--batch-sizes", "1,2",
                                    "--time-budget", "0.000001"))
    assert output["results"] and all(r["status"] == "skipped" for r in output["results"])
    assert all("--time-budget" in r["reason"] for r in output["results"])
    assert output["summary"]["not_measured"]


def test_time_budget_uses_measured_cost(tmp_path):
    args = harness.parse_args(tiny_args(tmp_path, "--variants", "bf16", "--batch-sizes", "4",
                                        "--time-budget", "60"))
    runner = harness.Runner(args)
    runner.results.append(harness.Measurement("plain", "plain-loop", "64x64", 1, s_per_image=10.0))
    variants = harness.make_variants("cpu", None)
    # 4 images x 10 s x (1 timed + 1 warm-up call) = 80 s > 60 s.
    assert runner.estimate_s(variants["bf16"], "64x64", 4, 1) == pytest.approx(80.0)
    runner.run_variant(variants["bf16"])
    skipped = runner.results[-1]
    assert skipped.status == "skipped" and skipped.reason.startswith("estimated 80 s")
    compiled = runner.estimate_s(variants["default-cuda"], "64x64", 1, 1)
    assert compiled == pytest.approx(20.0 + runner.compile_estimate) and runner.compile_estimate == 120.0


def test_counted_flops_match_the_sdxl_table():
    """The meta-device count for the real SDXL configs equals benchmarks/sdxl/flops_1024.json."""
    counts = harness.count_flops(FULL, 1024, 1024)
    table = json.loads((FULL / "flops_1024.json").read_text())
    assert counts.unet_forward == table["unet_flops_b1"]
    assert counts.vae_decode == table["vae_decode_flops"]
    assert counts.text_encoders_per_prompt == (table["text_encoder_flops_per_prompt"]
                                               + table["text_encoder_2_flops_per_prompt"])
    assert counts.per_image(30, cfg=True) == table["image_total_flops_cfg"]
    # CFG off after 40%: 12 guided steps, 18 unguided.
    assert counts.per_image(30, cfg=True, cfg_cutoff=0.4) == (
        counts.unet_forward * (2 * 12 + 18) + counts.vae_decode + 2 * counts.text_encoders_per_prompt)


def test_unknown_variant_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        harness.parse_args(tiny_args(tmp_path, "--variants", "bf16,warp-speed"))
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_compiled_variant_stays_within_bf16_tolerance(tmp_path):
    """torch.compile (default mode on CPU) + channels_last: compile time reported, same image."""
    output = harness.main(tiny_args(tmp_path, "--variants", "bf16,default-cuda,vae,vae-compile",
                                    "--batch-sizes", "1"))
    rows = {r["variant"]: r for r in output["results"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    compiled = rows["default-cuda"]
    assert compiled["compile_s"] is not None and compiled["compile_s"] > 0
    assert compiled["applied"]["compiled"] == ["unet", "vae.decode"]
    assert compiled["applied"]["compile_mode"] == "default"
    assert compiled["drift_max"] <= harness.DEFAULT_DRIFT_TOL
    assert rows["vae-compile"]["drift_max"] <= harness.DEFAULT_DRIFT_TOL


@pytest.mark.slow
def test_memory_model_matches_pick_batch_size_constants():
    from echo_os.engines import cuda_profile

    figures = harness.memory_model(FULL)
    assert figures["unet_cfg_image_mib"] * 2**20 == pytest.approx(
        cuda_profile.UNET_ACT_BYTES_PER_IMAGE_CFG_1024, rel=0.02)
    assert figures["vae_decode_image_mib"] * 2**20 == pytest.approx(
        cuda_profile.VAE_DECODE_ACT_BYTES_PER_IMAGE_1024, rel=0.02)


@pytest.mark.slow  # 30 s on 2 cores
def test_an_error_at_one_batch_size_keeps_the_others(tmp_path, monkeypatch):
    real_measure = harness.Runner.measure

    def measure(self, variant, pipe, applied, width, height, batch_size, batches):
        if batch_size == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return real_measure(self, variant, pipe, applied, width, height, batch_size, batches)

    monkeypatch.setattr(harness.Runner, "measure", measure)
    output = harness.main(tiny_args(tmp_path, "--variants", "vae", "--batch-sizes", "1,2,4"))
    statuses = [(r["batch_size"], r["status"]) for r in output["results"]]
    assert statuses == [(1, "ok"), (2, "error"), (4, "ok")]
    assert "out of memory" in output["results"][1]["reason"]
