"""Every API job kind's work and memory bound (issue 25, red-team item 9): one estimate per kind in
echo_os/render/work.py, checked where jobs are accepted (echo_os.api.deps.Submitter); a job over a limit is a
422 on the body field to lower, naming the estimate and the limit, and nothing is recorded."""

from __future__ import annotations

import pytest

from echo_os.api.specs import (
    AnimaticJobSpec,
    AnimaticSpec,
    BatchSpec,
    ClipSpec,
    EvolveJobSpec,
    EvolveSpec,
    RenderSpec,
)
from echo_os.render.requests import RenderRequest
from echo_os.render.work import (
    MAX_CALL_BYTES,
    MAX_JOB_IMAGES,
    MAX_JOB_MEGAPIXEL_STEPS,
    WorkLimitError,
    check_job_work,
    job_work,
)
from tests.api_helpers import api_client

BIG = {"engine": "draft", "size": "4096x4096", "steps": 200}


def _clip(frames: int, chunk: int | None, size: int = 1024, steps: int = 25) -> RenderRequest:
    options: dict = {"frames": frames}
    if chunk is not None:
        options["decode_chunk_size"] = chunk
    return RenderRequest(prompt="x", width=size, height=size * 9 // 16 // 8 * 8, steps=steps, output="video",
                         model="svd", options=options)


def test_each_kind_has_an_estimate_and_the_defaults_fit():
    image = job_work("render", RenderSpec(items=(RenderRequest(prompt="x", width=1024, height=1024, steps=30, count=4),)))
    assert image.images == 4 and image.megapixel_steps == 4 * 30
    story = job_work("batch", BatchSpec(items=tuple(RenderRequest(prompt=f"s{n}", steps=50) for n in range(1000))))
    assert story.images == MAX_JOB_IMAGES and story.megapixel_steps == MAX_JOB_MEGAPIXEL_STEPS  # the largest story fits
    check_job_work("batch", BatchSpec(items=tuple(RenderRequest(prompt=f"s{n}", steps=50) for n in range(1000))))
    clip = check_job_work("clip", ClipSpec(items=(_clip(25, None),)))  # SVD's 25 frames at 1024x576, decoded at once
    assert clip.megapixel_steps == 25 * (1024 * 576 / 1024**2) * 25 and clip.memory_bytes < MAX_CALL_BYTES
    hour = check_job_work("animatic", AnimaticJobSpec(animatic=AnimaticSpec(project="p", fps=24, size=(1920, 1080), fade=0,
                                                                    frames=24 * 3600)))
    assert hour.megapixel_steps == pytest.approx(MAX_JOB_MEGAPIXEL_STEPS)  # the longest video is the largest job
    evolve = EvolveSpec(start="a" * 64, run_id="b" * 16, rounds=3, per_round=4, objective={}, scorer="clip",
                        min_gain=0.0, strengths=(0.3,))
    assert check_job_work("evolve", EvolveJobSpec(evolve=evolve)).images == 12
    for output in ("mesh", "audio"):
        check_job_work("render", RenderSpec(items=(RenderRequest(prompt="x", output=output, steps=64, count=4),)))


def test_each_kind_over_a_limit_names_the_field_and_the_limit():
    cases = [
        ("render", RenderSpec(items=(RenderRequest(prompt="x", width=4096, height=4096, steps=200, count=64),)),
         "steps", "megapixel-steps"),
        ("render", RenderSpec(items=(RenderRequest(prompt="x", width=4096, height=4096, dtype="float32"),)),
         "size", "64 GiB"),
        ("clip", ClipSpec(items=(_clip(128, None),)), "decode_chunk_size", "64 GiB"),
        ("clip", ClipSpec(items=(_clip(128, 1, size=4096, steps=100),)), "frames", "megapixel-steps"),
        ("evolve", EvolveJobSpec(evolve=EvolveSpec(start="a" * 64, run_id="b" * 16, rounds=100, per_round=64,
                                             objective={}, scorer="clip", min_gain=0.0, strengths=(0.3,))),
         "per_round", f"at most {MAX_JOB_IMAGES:,} images"),
        ("animatic", AnimaticJobSpec(animatic=AnimaticSpec(project="p", fps=60, size=(1920, 1080), fade=0,
                                                   frames=60 * 3600)), "fps", "megapixel-steps"),
    ]
    for kind, spec, field, said in cases:
        with pytest.raises(WorkLimitError) as raised:
            check_job_work(kind, spec)
        assert raised.value.option == field and said in str(raised.value), (kind, str(raised.value))
    check_job_work("clip", ClipSpec(items=(_clip(128, 8),)))  # the same clip decoded 8 frames at a time fits


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_the_api_refuses_each_kind_over_its_limit_with_a_422(workspace):
    async with api_client(workspace, start_worker=False) as (client, _):
        cases = [
            ("/api/render", {"prompt": "a harbour", **BIG, "count": 64}, "steps"),
            ("/api/batch", {"project": "huge", "prompts": [f"scene {n}" for n in range(1000)], **BIG}, "steps"),
            ("/api/compare", {"prompt": "a harbour", "seeds": list(range(64)), "size": "4096x4096", "steps": [200],
                              "engines": ["draft"]}, "steps"),
        ]
        for route, body, field in cases:
            response = await client.post(route, json=body)
            assert response.status_code == 422, (route, response.text)
            detail = response.json()["detail"][0]
            assert detail["loc"] == ["body", field], (route, detail)
            assert f"{MAX_JOB_MEGAPIXEL_STEPS:,}" in detail["msg"] and "megapixel-steps" in detail["msg"], detail
        assert (await client.get("/api/jobs")).json()["items"] == []
        assert not list((workspace.artifacts_dir / ".jobs").glob("*/prompts.txt"))  # the batch's plan went too
        response = await client.post("/api/render", json={"prompt": "a harbour", **BIG, "count": 4})
        assert response.status_code == 202, response.text  # within the limits
