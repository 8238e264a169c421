"""Every bad input exits 2 with one line naming the option, and writes nothing."""

from __future__ import annotations

import pytest

BAD = [
    (["--size", "1000x1001"], "multiple of 8"),
    (["--size", "0x512"], "width"),
    (["--size", "8192x512"], "width"),
    (["--size", "big"], "--size"),
    (["--steps", "0"], "steps"),
    (["--steps", "201"], "steps"),
    (["--cfg", "nan"], "cfg"),
    (["--cfg", "-1"], "cfg"),
    (["--count", "0"], "count"),
    (["--count", "65"], "count"),
    (["--scheduler", "warp"], "euler"),
    (["--engine", "magic"], "draft"),
    (["--model", "nope"], "nope"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_exits_2_with_one_line(run_cli, workspace, args, needle):
    code, out, err = run_cli("--home", str(workspace.home), "render", "warm fractal", *args)
    assert code == 2
    assert err.strip().count("\n") == 0, err
    assert needle in err
    assert "Traceback" not in err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))


def test_empty_prompt(run_cli, workspace):
    code, _, err = run_cli("--home", str(workspace.home), "render", "   ")
    assert code == 2 and "prompt" in err and err.strip().count("\n") == 0


def test_unknown_engine_lists_allowed_values(run_cli, workspace):
    _, _, err = run_cli("--home", str(workspace.home), "render", "x", "--engine", "magic")
    for name in ("auto", "sdxl", "cpu", "draft"):
        assert name in err


def test_device_cuda_without_a_gpu_is_one_line_not_a_cpu_render(run_cli, tiny_workspace):
    """auto follows the engine's device rule: asking for CUDA where there is none is an error, not a
    quiet CPU render."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code, _, err = run_cli("--home", str(tiny_workspace.home), "render", "x", "--model", "tiny", "--size", "64x64",
                           "--device", "cuda")
    assert code == 2 and "--device cuda was asked for but no CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert not tiny_workspace.artifacts_dir.exists() or not list(tiny_workspace.artifacts_dir.rglob("image.png"))


def test_a_full_disk_is_one_line_with_nothing_kept_and_no_log_written(run_cli, workspace, monkeypatch):
    """No test machine has a full disk to offer: the write that would hit ENOSPC raises it, as the OS does."""
    import errno

    from echo_os.artifacts import store

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "_write_durably", full)
    code, _, err = run_cli("--home", str(workspace.home), "render", "warm fractal", "--engine", "draft")
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 1 and len(errors) == 1, err
    assert "the disk is full: nothing was saved" in err and "Traceback" not in err and "details in" not in err
    assert not list(workspace.artifacts_dir.glob("*/*/*/image.png"))
    assert not list(workspace.home.rglob("*.log"))
