"""Finding, converting and loading models: the default GGUF, other specs, and quantization."""

from __future__ import annotations

import time

import pytest
import torch

from server import models
from server.engine import bf16


def test_default_model_is_converted_once_with_a_progress_bar(tmp_path, capsys) -> None:
    started = time.monotonic()
    name, path, offline = models.resolve(None, home=tmp_path)
    assert (name, offline) == ("SmolLM2-135M-Instruct", True)
    assert (tmp_path / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().err
    first = time.monotonic() - started
    started = time.monotonic()
    assert models.resolve(None, home=tmp_path)[1] == path
    assert capsys.readouterr().err == ""  # cached: no conversion the second time
    assert time.monotonic() - started < first


def test_a_gguf_path_and_a_directory_are_accepted(default_model_dir) -> None:
    gguf = models.default_gguf_path()
    assert models.resolve(str(gguf))[1] == str(default_model_dir)
    assert models.resolve(str(default_model_dir)) == (default_model_dir.name, str(default_model_dir), True)


@pytest.mark.parametrize("spec", ["/no/such/dir", "./missing.gguf"])
def test_missing_models_are_reported(spec: str) -> None:
    with pytest.raises(models.ModelNotFound):
        models.resolve(spec)


def test_a_directory_without_a_checkpoint_is_refused(tmp_path) -> None:
    with pytest.raises(models.ModelNotFound, match="config.json"):
        models.resolve(str(tmp_path))


@pytest.mark.parametrize(
    ("quant", "max_mib"), [("q4", 220), ("w8a8", 260), ("none", 600), ("bf16", 400), ("int8", 230), ("nf4", 120), ("fp4", 120)]
)
def test_each_quantization_loads_smaller_and_still_answers(default_model_dir, quant: str, max_mib: int) -> None:
    loaded = models.load(None, quant)
    assert loaded.quant == quant
    assert loaded.footprint_bytes < max_mib * 2**20
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name the capital of France."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = loaded.model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_auto_runs_the_default_model_on_its_own_4_bit_blocks_and_a_checkpoint_in_fp32_or_bf16(default_model_dir) -> None:
    """The embedded GGUF's layers are all Q4_1 blocks, which int4 groups hold as they are; a
    transformers directory says nothing of its source, so it runs in fp32, or in bf16 products
    where the CPU multiplies bf16 in hardware."""
    assert models.linear_block_types(models.default_gguf_path()) == {"Q4_1"}
    assert models.choose_quant(None) == models.choose_quant(str(models.default_gguf_path())) == "q4"
    assert models.choose_quant(str(default_model_dir)) == ("bf16" if bf16.native() else "none")  # bf16 where the CPU has it
    assert models.choose_quant("qwen2.5-coder-0.5b") == "w8a8"  # the catalogue's measured choice
    loaded = models.load(None)
    assert loaded.quant == "q4"
    layer = loaded.model.model.layers[0]
    assert "int4" in repr(layer.mlp.down_proj) and "int8x2" in repr(loaded.model.lm_head)


def test_an_unknown_quantization_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="choose from auto, none, q4, w8a8, bf16"):
        models.quantization_kwargs("int3")


def test_the_test_run_writes_into_a_tandem_home_of_its_own() -> None:
    """conftest points TANDEM_HOME at a temporary folder for the whole run, subprocesses included,
    with only the prepared model cache linked in."""
    import os
    import subprocess
    import sys

    from server.settings import tandem_home
    from tests.conftest import ROOT, RUN_HOME

    assert tandem_home() == RUN_HOME and (RUN_HOME / "models").is_symlink()
    child = subprocess.run(
        [sys.executable, "-c", "from server.settings import tandem_home; print(tandem_home())"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
        cwd=ROOT,
    )
    assert child.stdout.strip() == str(RUN_HOME)
