"""Multi-turn rollouts that keep their state (`rollout.turn_state`) against the re-encoding path, on every family's
tiny model: the same trajectories and the same sampling log-probs turn by turn (1e-5), the shared-prompt scoring
equal to the full-sequence scoring in values and gradients, and a GRPO update equal on both paths.

The scripted tests replace the token draw (`next_tokens`) by a script per prompt, so the trajectories hold real
tool calls whose zoomed crops reach the model as new images, the prompts' rows stop at different steps (holes in
the kept cache) and the two prompts take different numbers of tokens per turn; the draw still sees the model's
logits, and records the log-prob of each scripted token under them.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch
from family_models import FAMILIES, assert_same_update, load, samples

from mmreason.config import GRPOConfig
from mmreason.models.family import get_family
from mmreason.rollout import multiturn, turn_state
from mmreason.rollout.types import SamplingParams
from mmreason.train.grpo import loss_mask_for, rollout_logprobs

G, T = 2, 0.8
KEEPS = [a for a in FAMILIES if get_family(a).cache == "kv"]


def _call(bbox: list[int], image: int = 1) -> str:
    return f'<tool_call>{{"name": "zoom_in", "arguments": {{"image": {image}, "bbox": {bbox}}}}}</tool_call>'


def _scripts(end: str) -> list[list[str]]:
    """Per prompt, its segments: prompt 0 zooms once then answers; prompt 1 thinks, zooms into its second image,
    zooms again, then answers at length."""
    return [
        [_call([0, 0, 40, 40]), "<answer>3</answer>" + end],
        ["<think>hm</think>" + _call([8, 8, 48, 40], 2), _call([0, 0, 28, 28]),
         "<think>three and one more</think><answer>4</answer>" + end],
    ]


class Script:
    """A stand-in for `prefix.next_tokens` that plays each prompt's script (its rows in lockstep) and records the
    log-prob of every scripted token under the model's temperature-scaled logits, per prompt."""

    def __init__(self, tok, scripts: list[list[str]]):
        self.tokens = [[tok.encode(s, add_special_tokens=False) for s in segs] for segs in scripts]
        self.gens: list[torch.Generator] = []
        self.where = defaultdict(lambda: [0, 0])  # prompt -> [segment, token]
        self.logps: dict[int, list[torch.Tensor]] = defaultdict(list)

    def __call__(self, logits, temperature, top_p, greedy, banned, generators=None):
        gen = generators[0]
        if not any(gen is g for g in self.gens):
            self.gens.append(gen)
        p = next(i for i, g in enumerate(self.gens) if g is gen)
        seg, pos = self.where[p]
        if pos == len(self.tokens[p][seg]):  # the previous segment ended: this is the next turn
            seg, pos = seg + 1, 0
        self.where[p] = [seg, pos + 1]
        token = self.tokens[p][seg][pos]
        scaled = logits.float().masked_fill(banned, float("-inf")) / temperature
        self.logps[p].append(torch.log_softmax(scaled, dim=-1)[:, token])
        return torch.full((logits.shape[0],), token, dtype=torch.long), self.logps[p][-1]


def _prompts(arch: str):
    out = samples(arch)
    for i, s in enumerate(out):
        s.meta.update(epoch=0, position=i)
    return out


def _scripted_rollout(monkeypatch, model, processor, arch: str, keep: bool):
    script = Script(processor.tokenizer, _scripts(get_family(arch).turn_end))
    monkeypatch.setattr(multiturn, "next_tokens", script)
    monkeypatch.setattr(turn_state, "next_tokens", script)
    params = SamplingParams(G, 160, temperature=T, seed=3)
    rollout = multiturn.tool_rollout(model, processor, _prompts(arch), ("zoom_in",), params, torch.device("cpu"),
                                     keep_state=keep, max_turns=3)
    return rollout, script


def _view(t: multiturn.Trajectory) -> tuple:
    return (t.ids, t.mm, t.policy, t.segments, t.turns, t.tool_calls, t.tool_errors, t.budget_exceeded, t.truncated)


@pytest.mark.parametrize("arch", KEEPS)
def test_kept_state_samples_what_re_encoding_samples(arch, tiny_root, monkeypatch):
    model, processor = load(arch, tiny_root)
    kept, kept_script = _scripted_rollout(monkeypatch, model, processor, arch, keep=True)
    full, full_script = _scripted_rollout(monkeypatch, model, processor, arch, keep=False)
    assert [_view(t) for t in kept.trajectories] == [_view(t) for t in full.trajectories]
    calls = [t.tool_calls for t in kept.trajectories]
    assert calls == [1, 1, 2, 2] and all(t.tool_errors == 0 for t in kept.trajectories), calls  # a real test
    assert all(len(t.vision) == 1 + t.tool_calls for t in kept.trajectories)  # each zoom fed a new image
    for p in (0, 1):  # every scripted token's log-prob, turn after turn, as the re-encoding path saw it
        a, b = torch.cat(kept_script.logps[p]), torch.cat(full_script.logps[p])
        assert a.shape == b.shape and torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_shared_trajectory_scoring_equals_the_full_sequences(arch, tiny_root, monkeypatch):
    model, processor = load(arch, tiny_root)
    rollout, _ = _scripted_rollout(monkeypatch, model, processor, arch, keep=False)
    banned = get_family(arch).suppressed_token_ids(processor.tokenizer)
    mask = rollout.completion_mask.bool()
    weights = torch.linspace(-1.0, 1.0, mask.numel()).view_as(mask) * mask
    out = {}
    for path in ("trajectory", "shared_trajectory"):
        copy_ = copy.deepcopy(model)
        logp, entropy = rollout_logprobs(copy_, rollout, path, T, banned, with_entropy=True)
        (logp * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in copy_.named_parameters() if p.grad is not None}
        out[path] = (logp.detach(), entropy.detach(), grads)
    (a, ea, ga), (b, eb, gb) = out["trajectory"], out["shared_trajectory"]
    assert a.shape == b.shape == mask.shape and int(mask.sum()) > 40
    torch.testing.assert_close(b[mask], a[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eb[mask], ea[mask], atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys() and ga
    for name, grad in ga.items():  # sums of many terms in another order: 1e-5 of the tensor's largest entry
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(gb[name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", KEEPS)
def test_grpo_update_is_the_same_on_shared_and_full_trajectories(arch, tiny_root, monkeypatch):
    model, processor = load(arch, tiny_root)
    rollout, _ = _scripted_rollout(monkeypatch, model, processor, arch, keep=True)
    adv = torch.linspace(-1.0, 1.0, 2 * G)
    mask = loss_mask_for(rollout, torch.ones(2 * G, dtype=torch.bool), mask_truncated=False)
    cfg = GRPOConfig(num_iterations=2, beta=0.1, lr=0.1, max_new_tokens=160, temperature=T)
    assert_same_update(model, processor, rollout, adv, mask, cfg, ("shared_trajectory", "trajectory"))


def test_kept_state_real_sampling_is_seeded_like_re_encoding(tiny_root):
    """Real sampling (no script) with the tiny model nudged towards `</tool_call>`: kept and re-encoding paths draw
    the same trajectories from the same per-prompt generators, turn counts varying between rows."""
    model, processor = load("qwen2_5_vl", tiny_root)
    end = processor.tokenizer.convert_tokens_to_ids("</tool_call>")

    def nudge(module, inputs, logits):
        logits[..., end] += 6.0
        return logits

    handle = model.lm_head.register_forward_hook(nudge)
    try:
        runs = {keep: multiturn.tool_rollout(model, processor, _prompts("qwen2_5_vl"), ("zoom_in",),
                                             SamplingParams(3, 6, seed=11), torch.device("cpu"), keep_state=keep,
                                             max_turns=2) for keep in (True, False)}
    finally:
        handle.remove()
    kept, full = ([_view(t) for t in runs[k].trajectories] for k in (True, False))
    assert kept == full
    turns = [len(t.segments) for t in runs[True].trajectories]
    assert len(set(turns)) > 1 and max(turns) > 1, turns


def test_a_hybrid_cache_family_re_encodes(tiny_root, monkeypatch):
    hybrid = [a for a in FAMILIES if a not in KEEPS]
    assert hybrid  # Qwen3.5's linear-attention layers
    model, processor = load(hybrid[0], tiny_root)
    assert not multiturn.keeps_state(model)
    monkeypatch.setattr(turn_state, "sample_kept", lambda *a, **k: pytest.fail("kept state on a hybrid cache"))
    rollout = multiturn.tool_rollout(model, processor, _prompts(hybrid[0]), ("zoom_in",), SamplingParams(2, 4, seed=1),
                                     torch.device("cpu"), keep_state=True, max_turns=1)
    assert len(rollout.trajectories) == 4 and all(t.done for t in rollout.trajectories)
