"""Engines the bench compares the served one against, each one step short of it.

The engine has one decode choice (transformers / eager / compiled); what it does to get its
eager step fast (repacking the weights for MKL, fusing a layer's sibling projections) is not a
switch a server needs, so the bench's before-and-after lives here, as engines that prepare their
weights less."""

from __future__ import annotations

import torch

from ..engine import Engine
from ..engine.packed import pack_linears


class UnpackedEngine(Engine):
    """The engine's own step on the weights as transformers loaded them."""

    def prepare_weights(self, model: torch.nn.Module) -> int:
        return 0


class UnfusedEngine(Engine):
    """The engine's own step on MKL-packed weights, each projection a matrix of its own."""

    def prepare_weights(self, model: torch.nn.Module) -> int:
        return pack_linears(model, fuse=False)
