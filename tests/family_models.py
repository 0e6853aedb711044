"""The tiny offline model of every supported family, saved once per test session, and two image prompts in each
family's own image sizes: what the per-family tests (test_families.py, test_turn_state.py) run on, and the
update-equality check they share."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from mmreason.processors import resize_image
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmreason.data.sample import Sample
from mmreason.models.family import family_names, get_family
from mmreason.models.policy import Policy, Reference
from mmreason.models.tiny import build_tiny
from mmreason.runs.run import Run
from mmreason.train.grpo import ScoringPlan, update_policy

FAMILIES = list(family_names())


@functools.cache
def saved(arch: str, root: str) -> Path:
    out = Path(root) / arch
    build_tiny(out, arch=arch)
    return out


def load(arch: str, root: str):
    """(model in eval mode, processor) of the family's tiny model saved under `root`."""
    folder = saved(arch, root)
    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def image(arch: str, size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    """An image resized as the family's processors expect (sides multiples of its image factor, or its square)."""
    family = get_family(arch)
    factor = family.image_factor
    return resize_image(Image.new("RGB", size, color), factor * factor, factor * factor * 16, family=family).image


def samples(arch: str) -> list[Sample]:
    def msg(n: int, text: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]

    a, b = image(arch, (64, 64), (200, 30, 30)), image(arch, (96, 64), (30, 200, 30))
    return [
        Sample("a", "counting", msg(1, "How many shapes are in the image? Count them."), [a], target="3"),
        Sample("b", "counting", msg(2, "How many?"), [b, a], target="4"),  # two images, most left padding
    ]


def assert_same_update(model, processor, rollout, adv, mask, cfg, paths: tuple[str, str]) -> None:
    """One GRPO update (`update_policy`, SGD) from copies of `model` along each scoring path (the loss and the
    no-grad passes alike): the same loss, KL and entropy, and the same weights after it."""
    results = []
    for path in paths:
        policy = Policy.wrap(copy.deepcopy(model), processor)
        optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=cfg.lr)
        upd, applied = update_policy(Run.local(policy), optimizer, Reference(policy, cfg.beta), rollout, adv, mask,
                                     cfg, ScoringPlan(path, path))
        assert applied == [True] * cfg.num_iterations
        results.append((upd, policy.model.state_dict()))
    (a, wa), (b, wb) = results
    for key in ("loss", "kl", "entropy"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for name, value in wb.items():
        torch.testing.assert_close(wa[name], value, atol=1e-6, rtol=1e-4, msg=name)
