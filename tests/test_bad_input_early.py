"""Input errors that can be found before any model loads are found there: one line, exit 2, no
traceback, nothing written. Before the fixes these were exit 1 with a traceback (UnicodeDecodeError,
ValueError, KeyError, ZeroDivisionError), or crashes after the weights had been loaded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import ltx_ascend.engine.text as text
from ltx_ascend.engine.text import PromptEncoder
from ltx_ascend.export import cli as export_cli
from ltx_ascend.media import load_image
from ltx_ascend.tools import plan, verify
from ltx_ascend.tools import run as cli
from tests.conftest import run_cli
from tests.test_run_inputs import guide_commands, media  # noqa: F401  (media: the shared fixture)


@pytest.fixture
def no_model(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input checks finished")

    import ltx_ascend.checkpoints.loader as loader

    monkeypatch.setattr(text, "load_component", forbidden)

    monkeypatch.setattr(loader.SingleGPUModelBuilder, "build", forbidden)


def _one_line_exit_2(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), err
    return lines[0]


def _run(tiny, media, tmp_path, capsys, pipeline, *extra):  # noqa: F811
    argv = [*guide_commands(tiny, media)[pipeline], *extra, "--artifacts", str(tmp_path / "a")]
    argv += ["--output-path", str(tmp_path / "out.mp4")]
    return run_cli(cli.main, argv, capsys)


def _resave(src: Path, dst: Path, config_edit=None, tensor_edit=None) -> Path:
    """A copy of a .safetensors file with its config metadata or tensors edited."""
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in list(f.keys())}
        metadata = dict(f.metadata() or {})
    if config_edit is not None:
        config = json.loads(metadata["config"])
        config_edit(config)
        metadata["config"] = json.dumps(config)
    if tensor_edit is not None:
        tensor_edit(tensors)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


# -- item 5: exit 1 with a traceback before, for errors found before any model loads ---------------


def test_binary_step_cache_file(tiny, media, tmp_path, monkeypatch, capsys, no_model):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.bin"
    spec.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    code, _, err = _run(tiny, media, tmp_path, capsys, "ti2vid_one_stage", "--step-cache", f"@{spec}")
    _one_line_exit_2(code, err, "--step-cache", "not UTF-8")


@pytest.mark.parametrize("value", ["²", "٣", "1.5", "-1"])
def test_step_cache_numbers_are_ascii_digits(tiny, media, tmp_path, monkeypatch, capsys, no_model, value):  # noqa: F811
    """'²'.isdigit() is True but int('²') raises: a traceback before the fix; '٣' (Arabic-Indic 3) was taken."""
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(tiny, media, tmp_path, capsys, "ti2vid_one_stage", "--step-cache", f"block:interval={value}")
    _one_line_exit_2(code, err, f"interval={value}", "not a whole number")


@pytest.mark.parametrize(("env", "needle"), [({"RANK": "abc"}, "RANK='abc'"), ({"WORLD_SIZE": "²"}, "WORLD_SIZE")])
def test_torchrun_environment_that_is_not_a_number(
    tiny, media, tmp_path, monkeypatch, capsys, no_model, env, needle  # noqa: F811
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = _run(tiny, media, tmp_path, capsys, "ti2vid_one_stage")
    _one_line_exit_2(code, err, needle, "torchrun")


def test_checkpoint_whose_config_is_another_models(tiny, media, tmp_path, monkeypatch, capsys, no_model):  # noqa: F811
    """The upsampler's file as --checkpoint-path: KeyError 'transformer' before the fix."""
    monkeypatch.chdir(tmp_path)
    argv = guide_commands(tiny, media)["ti2vid_one_stage"]
    argv[argv.index(str(tiny.checkpoint))] = str(tiny.spatial_upsampler)
    code, _, err = run_cli(cli.main, [*argv, "--artifacts", str(tmp_path / "a")], capsys)
    _one_line_exit_2(code, err, "no `transformer` section", "LatentUpsampler")


def test_plan_config_without_a_transformer(tmp_path, capsys):
    config = tmp_path / "vae.json"
    config.write_text(json.dumps({"vae": {"dims": 3}}))
    code, _, err = run_cli(plan.main, ["ti2vid_two_stages", "--shape", "41x1024x1536", "--config", str(config)], capsys)
    _one_line_exit_2(code, err, "--config", "no `transformer` section")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--devices", "2", "--parallel", "cfg=2", "--link-gb-s", "0"], "--link-gb-s 0"),  # ZeroDivisionError before
        (["--devices", "0"], "--devices 0"),  # printed a plan before
        (["--hbm-gb=-32"], "--hbm-gb -32"),  # printed a plan before
        (["--hbm-gb", "0"], "--hbm-gb 0"),  # fell back to the SoC's figure silently before
        (["--peak-tflops", "nan"], "--peak-tflops"),
    ],
)
def test_plan_refuses_counts_and_sizes_that_are_not_positive(capsys, extra, needle):
    code, out, err = run_cli(plan.main, ["ti2vid_two_stages", "--shape", "41x1024x1536", *extra], capsys)
    _one_line_exit_2(code, err, needle)
    assert out == ""  # no plan printed


def test_verify_lora_strength_that_is_not_a_number(tiny, capsys):
    argv = ["--lora", str(tiny.distilled_lora), "abc", "--checkpoint-path", str(tiny.checkpoint)]
    code, _, err = run_cli(verify.main, argv, capsys)
    _one_line_exit_2(code, err, "--lora", "abc", "must be a number")


def test_export_text_tokens_zero_before_loading(tiny, tmp_path, capsys, no_model):
    argv = ["--component", "text_connectors", "--shape", "9x128x192", "--text-tokens", "0"]
    argv += ["--out", str(tmp_path / "a"), "--checkpoint-path", str(tiny.checkpoint)]
    argv += ["--gemma-root", str(tiny.gemma_root)]
    code, _, err = run_cli(export_cli.main, argv, capsys)
    _one_line_exit_2(code, err, "--text-tokens 0", ">= 1")
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())


# -- item 6: crashes after loading before, for inputs that can be checked first --------------------


def test_x1_5_upsampler_in_a_x2_pipeline(tiny, media, tmp_path, monkeypatch, capsys, no_model):  # noqa: F811
    """AssertionError inside ltx-core after loading, before the fix."""
    monkeypatch.chdir(tmp_path)
    x15 = _resave(tiny.spatial_upsampler, tmp_path / "x1.5.safetensors", lambda c: c.update(spatial_scale=1.5))
    argv = guide_commands(tiny, media)["ti2vid_two_stages_hq"]
    argv[argv.index(str(tiny.spatial_upsampler))] = str(x15)
    code, _, err = run_cli(cli.main, [*argv, "--artifacts", str(tmp_path / "a")], capsys)
    _one_line_exit_2(code, err, str(x15), "x1.5", "x2")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["transformer"].update(num_layers=3), "num_layers is 3, its weights' is 2"),
        (lambda c: c["transformer"].update(num_attention_heads=4), "video width"),
        (lambda c: c["transformer"].update(audio_attention_head_dim=4), "audio width"),
        (lambda c: c["transformer"].update(num_layers="2"), "whole number"),
    ],
)
def test_config_that_does_not_fit_the_weights(tiny, media, tmp_path, monkeypatch, capsys, no_model, edit, needle):  # noqa: F811
    """A size mismatch from load_state_dict after reading the weights, before the fix."""
    monkeypatch.chdir(tmp_path)
    bad = _resave(tiny.checkpoint, tmp_path / "bad-config.safetensors", edit)
    argv = guide_commands(tiny, media)["ti2vid_one_stage"]
    argv[argv.index(str(tiny.checkpoint))] = str(bad)
    code, _, err = run_cli(cli.main, [*argv, "--artifacts", str(tmp_path / "a")], capsys)
    _one_line_exit_2(code, err, needle)


def test_corrupt_tokenizer_model(tiny, media, tmp_path, monkeypatch, capsys, no_model):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "gemma"
    shutil.copytree(tiny.gemma_root, root)
    tokenizer = next(root.rglob("tokenizer.model"))
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])  # truncated
    argv = guide_commands(tiny, media)["ti2vid_one_stage"]
    argv[argv.index(str(tiny.gemma_root))] = str(root)
    code, _, err = run_cli(cli.main, [*argv, "--artifacts", str(tmp_path / "a")], capsys)
    _one_line_exit_2(code, err, str(tokenizer), "SentencePiece")


def test_one_pixel_image(tiny, media, tmp_path, monkeypatch, capsys, no_model):  # noqa: F811
    """IndexError in the H.264 round trip after loading, before the fix."""
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(image)
    code, _, err = _run(tiny, media, tmp_path, capsys, "ti2vid_one_stage", "--image", str(image), "0", "1.0")
    _one_line_exit_2(code, err, str(image), "1x1 pixels is too small")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "I;16", "RGBA"])
def test_grayscale_and_other_modes_are_converted_to_rgb(tmp_path, mode):
    """ltx-pipelines 1.0.0 (and we, before the fix) took `np.array(image)[..., :3]`: a grayscale image
    became 3 columns and failed with a ValueError after loading. It is converted to RGB."""
    ramp = np.linspace(0, 255, 32 * 48).reshape(32, 48).astype(np.uint8)
    rgb_path = tmp_path / "rgb.png"
    Image.fromarray(np.stack([ramp] * 3, -1)).save(rgb_path)
    path = tmp_path / f"{mode.replace(';', '')}.png"
    gray = Image.fromarray(ramp)
    converted = Image.fromarray(ramp.astype(np.uint16) * 257) if mode == "I;16" else gray.convert(mode)
    assert converted.mode == mode
    converted.save(path)
    got = load_image(str(path), 32, 48, 0, torch.float32, torch.device("cpu"))
    want = load_image(str(rgb_path), 32, 48, 0, torch.float32, torch.device("cpu"))
    assert got.shape == (1, 3, 1, 32, 48)
    assert torch.allclose(got, want, atol=2 / 127.5)  # the same picture (palette rounding at most 1 level)


def test_truncated_prompt_cache_entry_is_discarded_and_rebuilt(tiny, tmp_path, caplog):
    """SafetensorError on every later run with that prompt, before the fix."""
    cache = tmp_path / "prompt-cache"
    cache.mkdir()
    encoder = PromptEncoder(tiny.checkpoint_set(), lambda: None, cache, torch.device("cpu"), torch.float32)
    entry = cache / "0123abcd.safetensors"
    save_file({"video": torch.zeros(1, 4, 8), "audio": torch.zeros(1, 4, 8)}, str(entry))
    assert encoder._cached("0123abcd") is not None
    entry.write_bytes(entry.read_bytes()[:-20])  # truncated
    with caplog.at_level(logging.WARNING, logger="ltx_ascend.engine.text"):
        assert encoder._cached("0123abcd") is None  # a miss: the prompt is encoded and stored again
    assert not entry.exists()
    assert any("prompt-cache entry" in r.getMessage() and "discarded" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("flag", ["--prompt", "--negative-prompt"])
def test_prompt_that_is_not_utf8(tiny, media, tmp_path, monkeypatch, capsys, no_model, flag):  # noqa: F811
    """Bytes of argv that are not UTF-8 arrive as lone surrogates (os.fsdecode): UnicodeEncodeError in
    the cache key, before the fix."""
    monkeypatch.chdir(tmp_path)
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")
    code, _, err = _run(tiny, media, tmp_path, capsys, "ti2vid_one_stage", flag, prompt)
    _one_line_exit_2(code, err, flag, "not valid UTF-8")
