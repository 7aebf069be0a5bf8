"""The benchmark's inputs: open-ended chat prompts (answers run to the token limit), code
prefixes for completion, and held-out text for perplexity. All ship with the package or the
interpreter, so the benchmark needs no download."""

from __future__ import annotations

import importlib.util
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

CHAT_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "Describe the water cycle in detail.",
    "Write a letter to a friend about your holiday.",
    "Explain why the sky is blue.",
    "Describe how to bake bread at home.",
    "Write a poem about the sea.",
    "Explain how vaccines work.",
    "Describe a day in the life of a farmer.",
    "Explain the rules of chess.",
    "Write a short story about a robot learning to paint.",
    "Describe the history of the bicycle.",
    "Explain how a computer processor works.",
    "Describe your favourite city and why.",
    "Explain photosynthesis to a child.",
    "Write a product description for a backpack.",
]


def chat_ids(tokenizer: Any, n: int) -> list[list[int]]:
    """n distinct chat prompts as token ids (repeats get a suffix so that no two are equal)."""
    prompts = [
        CHAT_PROMPTS[i % len(CHAT_PROMPTS)] + ("" if i < len(CHAT_PROMPTS) else f" (version {i // len(CHAT_PROMPTS)})") for i in range(n)
    ]
    return [
        list(
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for p in prompts
    ]


def code_prefixes(n: int, context_chars: int = 1500) -> list[str]:
    """What completion requests see while someone types textwrap.py: the text up to the cursor
    at n points a few characters apart, from a window that starts at a line boundary and stays
    put while they type, as the language server's prompt does."""
    source = inspect.getsource(textwrap)
    cursor = source.index("    def _wrap_chunks")
    start = source.rfind("\n", 0, cursor - context_chars) + 1
    return [source[start : cursor + 7 * i] for i in range(n)]


def heldout_text() -> list[tuple[str, str]]:
    """(name, text) for perplexity: Python source and documentation that ship with the interpreter."""
    import json.decoder
    from pydoc_data import topics

    docs = "\n\n".join(topics.topics[k] for k in ("exceptions", "for", "with", "lambda", "import", "assignment"))
    return [("Python source (json/decoder.py)", inspect.getsource(json.decoder)), ("Python documentation (pydoc topics)", docs)]


# Library sources that come into .venv as dependencies of torch (the project itself uses none of them).
CODE_SOURCES = (
    ("networkx", "algorithms/shortest_paths/weighted.py"),
    ("sympy", "utilities/iterables.py"),
    ("networkx", "algorithms/dag.py"),
    ("networkx", "classes/graph.py"),
)
_STATEMENT = re.compile(r"^ {8,}(if |for |return |while |yield |elif |[A-Za-z_][A-Za-z_0-9.]* = )")


def code_completion_prompts(n: int, context_chars: int = 1500) -> list[str]:
    """n code-completion prompts, each the ~context_chars of source before a statement inside a
    function body (the cursor at the start of that line), evenly spread over CODE_SOURCES: the
    continuation often repeats names, calls and whole lines from above, as real completions do."""
    texts = []
    for package, relpath in CODE_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{package} is not installed in this environment (it comes with torch)")
        texts.append((Path(next(iter(spec.submodule_search_locations))) / relpath).read_text(encoding="utf-8"))
    cuts: list[list[int]] = []
    for text in texts:
        offsets, at = [], 0
        for line in text.splitlines(keepends=True):
            if at > context_chars and _STATEMENT.match(line):
                offsets.append(at)
            at += len(line)
        cuts.append(offsets)
    per_file = -(-n // len(texts))
    prompts = []
    for i in range(n):
        f, j = i % len(texts), i // len(texts)
        offsets = cuts[f]
        cut = offsets[(j * len(offsets)) // per_file + len(offsets) // (2 * per_file)]
        start = texts[f].rfind("\n", 0, cut - context_chars) + 1
        prompts.append(texts[f][start:cut])
    return prompts


def long_prompt_ids(tokenizer: Any, tokens: int) -> list[int]:
    """A prompt of `tokens` tokens: a user pasting a long document (a library source that ships
    with torch's dependencies) and asking about it."""
    spec = importlib.util.find_spec("networkx")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("networkx is not installed in this environment (it comes with torch)")
    text = (Path(next(iter(spec.submodule_search_locations))) / "classes/graph.py").read_text(encoding="utf-8")
    ids = list(tokenizer(text)["input_ids"])
    while len(ids) < tokens:
        ids += ids
    question = list(tokenizer("\n\nSummarise what this module does.")["input_ids"])
    return ids[: tokens - len(question)] + question
