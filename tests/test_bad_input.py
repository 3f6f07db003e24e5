"""Bad input: one line naming the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from ltx_ascend.checkpoints import inspection
from ltx_ascend.checkpoints import tiny as tiny_cli
from tests.conftest import run_cli


def _inspect(capsys, *argv):
    return run_cli(inspection.main, [str(a) for a in argv], capsys)


def _assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_good_set_inspects_clean(tiny, capsys):
    code, out, err = _inspect(
        capsys,
        "--checkpoint-path",
        tiny.checkpoint,
        "--gemma-root",
        tiny.gemma_root,
        "--distilled-lora",
        tiny.distilled_lora,
        "0.8",
    )
    assert code == 0, err
    assert "dit" in out and "rank 4" in out


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = _inspect(capsys, "--checkpoint-path", tmp_path / "nope.safetensors")
    _assert_one_line_error(code, err, "not found", "nope.safetensors")


def test_safetensors_without_config_metadata(tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(bare))
    code, _, err = _inspect(capsys, "--checkpoint-path", bare)
    _assert_one_line_error(code, err, "no `config` metadata")


def test_not_a_safetensors_file(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    code, _, err = _inspect(capsys, "--checkpoint-path", junk)
    _assert_one_line_error(code, err, "not a readable .safetensors")


def test_lora_matching_nothing(tiny, tmp_path, capsys):
    alien = tmp_path / "alien-lora.safetensors"
    save_file(
        {"unet.down.0.lora_A.weight": torch.zeros(4, 8), "unet.down.0.lora_B.weight": torch.zeros(8, 4)}, str(alien)
    )
    code, _, err = _inspect(capsys, "--checkpoint-path", tiny.checkpoint, "--lora", alien, "1.0")
    _assert_one_line_error(code, err, "matches no transformer weight", "alien-lora")


def test_lora_strength_not_a_number(tiny, capsys):
    code, _, err = _inspect(capsys, "--checkpoint-path", tiny.checkpoint, "--lora", tiny.distilled_lora, "strong")
    _assert_one_line_error(code, err, "STRENGTH must be a number")


def test_gemma_root_without_tokenizer(tiny, tmp_path, capsys):
    root = tmp_path / "gemma"
    shutil.copytree(tiny.gemma_root, root)
    (root / "tokenizer.model").unlink()
    code, _, err = _inspect(capsys, "--checkpoint-path", tiny.checkpoint, "--gemma-root", root)
    _assert_one_line_error(code, err, "no tokenizer.model", "--gemma-root")


@pytest.mark.parametrize("argv,needle", [(["--seed", "-1"], "--seed"), ([], "")])
def test_tiny_cli_bad_args(tmp_path, capsys, argv, needle):
    if not argv:  # --out pointing at a file
        target = tmp_path / "file"
        target.write_text("x")
        argv, needle = ["--out", str(target)], "is a file"
    else:
        argv = ["--out", str(tmp_path / "t"), *argv]
    code, _, err = run_cli(tiny_cli.main, argv, capsys)
    _assert_one_line_error(code, err, needle)
    assert not (tmp_path / "t").exists()  # nothing half-written
