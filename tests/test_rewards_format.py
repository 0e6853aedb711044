"""Golden cases for the `format` and `format_nothink` rewards."""

from __future__ import annotations

import pytest
from mmreason.rewards.format import format_completion, has_answer_only_format, has_think_answer_format

from mmreason.registry import get_reward

CASES = [
    # text, format, format_nothink
    ("<think>reasoning</think><answer>3</answer>", 1.0, 0.0),
    ("  <think>\nr\n</think>\n\n<answer> 3 </answer>\n", 1.0, 0.0),
    ("<think></think><answer>3</answer>", 1.0, 0.0),  # the SFT target of a record without gold reasoning
    ("<answer>3</answer>", 0.0, 1.0),
    ("\n <answer>B</answer> \n", 0.0, 1.0),
    ("<think>r</think><answer></answer>", 0.0, 0.0),  # blank answer
    ("<answer>  </answer>", 0.0, 0.0),
    ("<think>r</think>text<answer>3</answer>", 0.0, 0.0),  # text between the parts
    ("preamble <think>r</think><answer>3</answer>", 0.0, 0.0),
    ("<think>r</think><answer>3</answer> trailing", 0.0, 0.0),
    ("<answer>3</answer><think>r</think>", 0.0, 0.0),  # wrong order
    ("<think>r</think><answer>1</answer><answer>2</answer>", 0.0, 0.0),  # several answers
    ("<answer>1</answer><answer>2</answer>", 0.0, 0.0),
    ("<think>a<think>b</think></think><answer>3</answer>", 0.0, 0.0),  # nested think
    ("<think>r</think><answer>a<answer>b</answer></answer>", 0.0, 0.0),  # nested answer
    ("<think>r<answer>3</answer></think>", 0.0, 0.0),  # answer inside think
    ("<think>r</think><answer>3", 0.0, 0.0),  # unclosed
    ("<think>r<answer>3</answer>", 0.0, 0.0),
    ("<THINK>r</THINK><ANSWER>3</ANSWER>", 0.0, 0.0),
    ("", 0.0, 0.0),
    ("3", 0.0, 0.0),
    ("<think>東京</think><answer><script>alert(1)</script></answer>", 1.0, 0.0),
    ("<think>" + "x" * 100_000 + "</think><answer>3</answer>", 1.0, 0.0),
    ("</think><answer>" * 6000, 0.0, 0.0),
]


@pytest.mark.parametrize("text, think, nothink", CASES)
def test_format_rewards(text, think, nothink):
    assert get_reward("format")([text]) == [think]
    assert get_reward("format_nothink")([text]) == [nothink]
    assert has_think_answer_format(text) is bool(think)
    assert has_answer_only_format(text) is bool(nothink)


def test_format_rewards_ignore_columns_and_score_each_completion():
    texts = ["<think>a</think><answer>1</answer>", "<answer>1</answer>"]
    assert get_reward("format")(texts, solution=[1, 2], image_size=[None, None]) == [1.0, 0.0]
    assert get_reward("format_nothink")(texts, anything=["x", "y"]) == [0.0, 1.0]
    assert get_reward("format")([]) == []


@pytest.mark.parametrize("answer, reasoning", [("B", ""), ("[1, 2, 3, 4]", "the box is left"), ("x", "a\nb")])
def test_format_completion_is_what_the_format_rewards_accept(answer, reasoning):
    think, nothink = format_completion(answer, True, reasoning), format_completion(answer, False)
    assert think == f"<think>{reasoning}</think><answer>{answer}</answer>" and nothink == f"<answer>{answer}</answer>"
    assert get_reward("format")([think, nothink]) == [1.0, 0.0]
    assert get_reward("format_nothink")([think, nothink]) == [0.0, 1.0]
