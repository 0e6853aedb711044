"""Peer dataset layouts -> mmreason records (mmreason.data.formats): one table of rows as each peer writes them, with
the exact record expected, and one table of malformed rows with the field their error must name."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from mmreason.data.formats import FORMATS, FormatError, adapt, format_help

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
SWIFT_SYSTEM = "You are a helpful assistant."
R1_SYSTEM = "A conversation between user and assistant. The user asks a question, and the assistant solves it."
SHEEP_BOXES = [[90.9, 160.8, 135, 212.8], [360.9, 480.8, 495, 532.8]]
BEACH_BOXES = [[331.5, 761.4, 853.5, 1594.8], [676, 685, 1099, 1427]]


def user_parts(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def msgs(*turns: tuple[str, object]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


# (case name, format, peer row, expected record)
CASES = [
    # ---- VLM-R1: README "For your own data" (grpo_jsonl.py), then the RefCOCO rows of rec_jsons_processed
    ("vlm_r1 conversations", "vlm_r1",
     {"id": 1, "image": "Clevr_CoGenT_TrainA_R1/data/images/CLEVR_trainA_000001_16885.png",
      "conversations": [{"from": "human", "value": "<image>What number of purple metallic balls are there?"},
                        {"from": "gpt", "value": "0"}]},
     {"id": 1, "image": "Clevr_CoGenT_TrainA_R1/data/images/CLEVR_trainA_000001_16885.png",
      "problem": "<image>What number of purple metallic balls are there?", "solution": "0"}),
    ("vlm_r1 multi-image conversations", "vlm_r1",
     {"id": 2, "image": ["before.png", "after.png"], "accu_reward_method": "default",
      "conversations": [{"from": "human", "value": "<image><image>How many balls in total?"},
                        {"from": "gpt", "value": "<answer>3</answer>"}]},
     {"id": 2, "image": ["before.png", "after.png"], "accu_reward_method": "default",
      "problem": "<image><image>How many balls in total?", "solution": "<answer>3</answer>"}),
    ("vlm_r1 numeric gpt value", "vlm_r1",
     {"image": "a.png", "conversations": [{"from": "human", "value": "<image>Area?"}, {"from": "gpt", "value": 3.5}]},
     {"image": "a.png", "problem": "<image>Area?", "solution": 3.5}),
    ("vlm_r1 refcoco row", "vlm_r1",
     {"height": 640, "width": 427, "id": 0, "dataset_name": "refcoco", "image_id": 0, "category_id": 1,
      "image": "train2014/COCO_train2014_000000581857.jpg",
      "problem": "Please provide the bounding box coordinate of the region this sentence describes: the lady with "
                 "the blue shirt.",
      "normal_caption": "the lady with the blue shirt", "solution": [103.93, 299.99, 238.15, 477.41],
      "normalized_solution": [243, 468, 557, 745]},
     {"height": 640, "width": 427, "id": 0, "dataset_name": "refcoco", "image_id": 0, "category_id": 1,
      "image": "train2014/COCO_train2014_000000581857.jpg",
      "problem": "Please provide the bounding box coordinate of the region this sentence describes: the lady with "
                 "the blue shirt.",
      "normal_caption": "the lady with the blue shirt", "solution": [103.93, 299.99, 238.15, 477.41],
      "normalized_solution": [243, 468, 557, 745]}),
    ("vlm_r1 rec row, string solution", "vlm_r1",
     {"image": "COCO_train2014_000000000009.jpg", "problem": "the bowl of broccoli", "solution": "[10,20,30,40]",
      "normal_caption": "the bowl of broccoli", "accu_reward_method": "iou"},
     {"image": "COCO_train2014_000000000009.jpg", "problem": "the bowl of broccoli", "solution": "[10,20,30,40]",
      "normal_caption": "the bowl of broccoli", "accu_reward_method": "iou"}),
    # ---- EasyR1: hiyouga/geometry3k, math12k, rl-mixed-dataset rows as read from parquet
    ("easyr1 image row", "easyr1",
     {"images": [{"bytes": PNG, "path": None}], "problem": "<image>How many sides does the shape have?",
      "answer": "48"},
     {"images": [{"bytes": PNG, "path": None}], "problem": "<image>How many sides does the shape have?",
      "solution": "48"}),
    ("easyr1 text row", "easyr1",
     {"problem": "What is $1+1$?", "answer": "2"},
     {"problem": "What is $1+1$?", "solution": "2"}),
    ("easyr1 mixed dataset text row", "easyr1",
     {"images": [], "problem": "What is 3*3?", "answer": "9"},
     {"problem": "What is 3*3?", "solution": "9"}),
    ("easyr1 multi-image paths", "easyr1",
     {"images": ["q/1.png", "q/2.png"], "problem": "Compare <image> and <image>: which is larger?", "answer": "B"},
     {"images": ["q/1.png", "q/2.png"], "problem": "Compare <image> and <image>: which is larger?",
      "solution": "B"}),
    ("easyr1 video row", "easyr1",
     {"videos": ["clips/a.mp4"], "problem": "<video>When does the dog jump?", "answer": "[2.0, 3.5]"},
     {"videos": ["clips/a.mp4"], "problem": "<video>When does the dog jump?", "solution": "[2.0, 3.5]"}),
    ("easyr1 prompt key", "easyr1",
     {"prompt": "<image>Count the cubes.", "answer": "3", "images": ["c.png"], "id": "x-1"},
     {"problem": "<image>Count the cubes.", "solution": "3", "images": ["c.png"], "id": "x-1"}),
    # ---- TRL: dataset_formats.md "Vision datasets", grpo_vlm.py (lmms-lab/multimodal-open-r1-8k-verified)
    ("trl conversational parts", "trl",
     {"prompt": user_parts({"type": "image"}, {"type": "text", "text": "What color is the sky in the image?"}),
      "images": ["sky.png"], "solution": "blue"},
     {"problem": "<image>What color is the sky in the image?", "images": ["sky.png"], "solution": "blue"}),
    ("trl grpo_vlm example row", "trl",
     {"image": "geo.png", "problem": "Find x.", "solution": "<think>...</think>\\boxed{5}",
      "original_question": "Find x.", "original_answer": "5",
      "prompt": [{"role": "system", "content": R1_SYSTEM}, {"role": "user", "content": "Find x."}]},
     {"image": "geo.png", "problem": "Find x.", "solution": "<think>...</think>\\boxed{5}", "system": R1_SYSTEM,
      "original_question": "Find x.", "original_answer": "5"}),
    ("trl standard prompt", "trl",
     {"prompt": "What is 2+2?", "solution": "4"},
     {"problem": "What is 2+2?", "solution": "4"}),
    ("trl prompt-completion", "trl",
     {"prompt": user_parts({"type": "text", "text": "Describe "}, {"type": "image"}, {"type": "text", "text": "."}),
      "completion": [{"role": "assistant", "content": [{"type": "text", "text": "It is blue."}]}],
      "images": [{"bytes": PNG, "path": "sky.png"}]},
     {"problem": "Describe <image>.", "solution": "It is blue.", "images": [{"bytes": PNG, "path": "sky.png"}]}),
    ("trl image carried by the part", "trl",
     {"prompt": user_parts({"type": "image", "image": "cat.png"}, {"type": "text", "text": "Which animal?"}),
      "solution": "cat"},
     {"problem": "<image>Which animal?", "images": ["cat.png"], "solution": "cat"}),
    ("trl mixed dataset text row", "trl",
     {"prompt": user_parts({"type": "text", "text": "What is the capital of France?"}), "images": [],
      "solution": "Paris"},
     {"problem": "What is the capital of France?", "solution": "Paris"}),
    # ---- ms-swift / LLaMA-Factory: Custom-dataset.md, data/README.md, GRPO-Multi-Modal-Training.md
    ("swift messages with system, image and video", "messages",
     {"messages": [{"role": "system", "content": "You are a helpful and harmless assistant."},
                   {"role": "user", "content": "<image>What is in the image, <video>What is in the video?"},
                   {"role": "assistant", "content": "The image shows an elephant, and the video a puppy."}],
      "images": ["/xxx/x.jpg"], "videos": ["/xxx/x.mp4"]},
     {"problem": "<image>What is in the image, <video>What is in the video?",
      "solution": "The image shows an elephant, and the video a puppy.",
      "system": "You are a helpful and harmless assistant.", "images": ["/xxx/x.jpg"], "videos": ["/xxx/x.mp4"]}),
    ("llamafactory sharegpt", "messages",
     {"conversations": [{"from": "human", "value": "<image>user instruction"},
                        {"from": "gpt", "value": "model response"}],
      "images": ["mllm_demo_data/1.jpg"], "system": "system prompt", "tools": "[]"},
     {"problem": "<image>user instruction", "solution": "model response", "system": "system prompt",
      "images": ["mllm_demo_data/1.jpg"], "tools": "[]"}),
    ("swift grpo row with solution column", "messages",
     {"images": ["image_path1", "image_path2"],
      "messages": [{"role": "user", "content": "How many items are there in the image?"}],
      "solution": "<answer> 3 </answer>"},
     {"images": ["image_path1", "image_path2"], "problem": "How many items are there in the image?",
      "solution": "<answer> 3 </answer>"}),
    ("solution column wins over the assistant turn", "messages",
     {"messages": msgs(("user", "<image>Count."), ("assistant", "<answer> 3 </answer>")), "image": "a.png",
      "solution": "3"},
     {"image": "a.png", "problem": "<image>Count.", "solution": "3"}),
    ("system turn overrides the system column", "messages",
     {"messages": [{"role": "system", "content": "from the turn"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a"}], "system": "from the column"},
     {"problem": "q", "solution": "a", "system": "from the turn"}),
    ("swift sharegpt pairs and system_prompt", "messages",
     {"system_prompt": "be brief", "conversation": [{"human": "What is 1+1?", "assistant": "2"}]},
     {"problem": "What is 1+1?", "solution": "2", "system": "be brief"}),
    ("answer column without an assistant turn", "messages",
     {"messages": [{"role": "user", "content": "<image>Which digit?"}], "images": ["d.png"], "answer": "7"},
     {"problem": "<image>Which digit?", "images": ["d.png"], "solution": "7"}),
    ("openai image_url blocks", "messages",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "Compare "},
                                                {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}},
                                                {"type": "image_url", "image_url": "https://e.com/b.png"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "same"}]}]},
     {"problem": "Compare <image><image>", "solution": "same", "images": ["https://e.com/a.png", "https://e.com/b.png"]}),
    ("anthropic image source", "messages",
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type":
                                                                             "image/png", "data": "AAAA"}},
                                                {"type": "text", "text": "What is it?"}]},
                   {"role": "assistant", "content": "a dot"}]},
     {"problem": "<image>What is it?", "solution": "a dot", "images": ["data:image/png;base64,AAAA"]}),
    ("turns stored as JSON text", "messages",
     {"messages": json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]), "id": 9},
     {"problem": "q", "solution": "a", "id": 9}),
    ("consecutive assistant turns are joined", "messages",
     {"messages": [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "<think>\n...\n</think>\n"},
                   {"role": "assistant", "content": "2"}]},
     {"problem": "1+1=?", "solution": "<think>\n...\n</think>\n2"}),
    # ---- ms-swift grounding: Custom-dataset.md "Grounding"
    ("swift grounding, one ref two boxes", "swift_grounding",
     {"messages": [{"role": "system", "content": SWIFT_SYSTEM},
                   {"role": "user", "content": "<image>Find the <ref-object> in the image"},
                   {"role": "assistant", "content": "<bbox><bbox>"}],
      "images": ["/xxx/x.jpg"], "objects": {"ref": ["sheep"], "bbox": copy.deepcopy(SHEEP_BOXES)}},
     {"problem": "<image>Find the sheep in the image", "solution": SHEEP_BOXES, "system": SWIFT_SYSTEM,
      "images": ["/xxx/x.jpg"]}),
    ("swift grounding, labels after the user's ref", "swift_grounding",
     {"messages": [{"role": "user", "content": "<image>Locate the <ref-object> in the image"},
                   {"role": "assistant", "content": '[\n\t{"bbox_2d": <bbox>, "label": "<ref-object>"},\n\t'
                                                    '{"bbox_2d": <bbox>, "label": "<ref-object>"}\n]'}],
      "images": ["cat.png"], "objects": {"ref": ["sheep", "sheep", "sheep"], "bbox": copy.deepcopy(SHEEP_BOXES)}},
     {"problem": "<image>Locate the sheep in the image", "solution": SHEEP_BOXES, "images": ["cat.png"]}),
    ("swift grounding, GRPO row, two refs, JSON objects", "swift_grounding",
     {"messages": [{"role": "user", "content": "<image>Find <ref-object> and <ref-object>."}], "images": ["b.jpg"],
      "objects": json.dumps({"ref": ["a dog", "a woman"], "bbox": BEACH_BOXES, "bbox_type": "real",
                             "image_id": [0, 0]}), "id": "beach-1"},
     {"problem": "<image>Find a dog and a woman.", "solution": BEACH_BOXES,
      "images": ["b.jpg"], "id": "beach-1"}),
    ("swift grounding, swapped corners and no box", "swift_grounding",
     {"messages": msgs(("user", "<image>Find <ref-object>"), ("assistant", "<bbox>")),
      "images": ["s.png"], "objects": {"ref": ["the mug"], "bbox": [[50, 60, "10", 20]]}},
     {"problem": "<image>Find the mug", "solution": [[10.0, 20, 50, 60]], "images": ["s.png"]}),
    ("swift grounding, absent object", "swift_grounding",
     {"messages": [{"role": "user", "content": "<image>Find <ref-object>"}, {"role": "assistant", "content": "none"}],
      "images": ["s.png"], "objects": {"ref": ["a unicorn"], "bbox": []}},
     {"problem": "<image>Find a unicorn", "solution": [], "images": ["s.png"]}),
]


@pytest.mark.parametrize(("fmt", "row", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_adapt(fmt: str, row: dict, expected: dict) -> None:
    before = copy.deepcopy(row)
    assert adapt(row, fmt) == expected
    assert row == before  # the peer row is left as it was


def test_every_format_has_two_cases() -> None:
    counts = {name: sum(c[1] == name for c in CASES) for name in FORMATS}
    assert min(counts.values()) >= 2, counts


BIG = b"\x00" * 1_000_000

# (case name, format, malformed row, text the error must contain: the field, or the reason)
BAD = [
    ("vlm_r1 no gpt turn", "vlm_r1", {"image": "a.png", "conversations": [{"from": "human", "value": "<image>q"}]},
     "'conversations'"),
    ("vlm_r1 no human turn", "vlm_r1", {"conversations": [{"from": "gpt", "value": "3"}]}, "'conversations[0]'"),
    ("vlm_r1 conversations not a list", "vlm_r1", {"conversations": {"from": "human", "value": "q"}},
     "'conversations'"),
    ("vlm_r1 two human turns", "vlm_r1",
     {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}, "multi-turn"),
    ("vlm_r1 placeholders and images disagree", "vlm_r1",
     {"image": "a.png", "conversations": [{"from": "human", "value": "<image><image>q"},
                                          {"from": "gpt", "value": "a"}]}, "'conversations'"),
    ("vlm_r1 rec without problem", "vlm_r1", {"image": "a.png", "solution": [1, 2, 3, 4]}, "'problem'"),
    ("vlm_r1 rec without solution", "vlm_r1", {"image": "a.png", "problem": "the dog"}, "'solution'"),
    ("vlm_r1 image of the wrong type", "vlm_r1", {"image": 7, "problem": "q", "solution": "a"}, "'image'"),
    ("vlm_r1 null gpt value", "vlm_r1",
     {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]}, "'conversations[1]'"),
    ("easyr1 no answer", "easyr1", {"images": ["a.png"], "problem": "<image>q"}, "'answer'"),
    ("easyr1 no question", "easyr1", {"answer": "3"}, "'problem'"),
    ("easyr1 problem not text", "easyr1", {"problem": ["q"], "answer": "3"}, "'problem'"),
    ("easyr1 images not a list", "easyr1", {"images": "a.png", "problem": "<image>q", "answer": "3"}, "'images'"),
    ("easyr1 null image", "easyr1", {"images": [None], "problem": "<image>q", "answer": "3"}, "'images[0]'"),
    ("easyr1 empty bytes dict", "easyr1", {"images": [{"bytes": None, "path": None}], "problem": "q", "answer": "3"},
     "'images[0]'"),
    ("easyr1 video placeholders", "easyr1", {"videos": ["v.mp4"], "problem": "<video><video>q", "answer": "1"},
     "'problem'"),
    ("trl no prompt", "trl", {"problem": "q", "solution": "a"}, "'prompt'"),
    ("trl prompt of the wrong type", "trl", {"prompt": {"role": "user"}, "solution": "a"}, "'prompt'"),
    ("trl no user turn", "trl", {"prompt": msgs(("system", "s")), "solution": "a"}, "no user turn"),
    ("trl no answer", "trl", {"prompt": msgs(("user", "q"))}, "'solution'"),
    ("trl unknown part", "trl",
     {"prompt": user_parts({"type": "text", "text": "q"}, {"type": "input_audio"}), "solution": "a"},
     "'prompt[0][1]'"),
    ("trl text part without text", "trl", {"prompt": user_parts({"type": "text"}), "solution": "a"},
     "'prompt[0][0]'"),
    ("trl part images and an images column", "trl",
     {"prompt": user_parts({"type": "image", "image": "a.png"}, {"type": "text", "text": "q"}), "images": ["b.png"],
      "solution": "a"}, "'prompt'"),
    ("trl more images than placeholders", "trl",
     {"prompt": user_parts({"type": "image"}, {"type": "text", "text": "q"}), "images": ["a.png", "b.png"],
      "solution": "a"}, "'prompt'"),
    ("trl tool turn", "trl", {"prompt": msgs(("user", "q"), ("tool", "42")), "solution": "a"}, "'prompt[1]'"),
    ("trl image in the system turn", "trl",
     {"prompt": [{"role": "system", "content": [{"type": "image"}]}, {"role": "user", "content": "q"}],
      "solution": "a"}, "'prompt[0][0]'"),
    ("trl completion from the user", "trl", {"prompt": "q", "completion": msgs(("user", "a"))},
     "'completion[0].role'"),
    ("messages no chat column", "messages", {"query": "q", "response": "a"}, "'messages'"),
    ("messages two chat columns", "messages",
     {"messages": msgs(("user", "q"), ("assistant", "a")), "conversations": []}, "'conversations'"),
    ("messages no user turn", "messages", {"messages": msgs(("system", "s"), ("assistant", "a"))}, "'messages"),
    ("messages multi-turn", "messages",
     {"messages": msgs(("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2"))}, "multi-turn"),
    ("messages no answer anywhere", "messages", {"messages": msgs(("user", "q"))}, "'messages'"),
    ("sharegpt function call", "messages",
     {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
                        {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]},
     "'conversations[1]'"),
    ("openai tool_calls", "messages",
     {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [{}]}]},
     "'messages[1]'"),
    ("messages unknown role", "messages", {"messages": msgs(("narrator", "q"), ("assistant", "a"))},
     "'messages[0].role'"),
    ("messages turn without role", "messages", {"messages": [{"content": "q", "text": "x"}]}, "'messages[0].role'"),
    ("messages system turn late", "messages", {"messages": msgs(("user", "q"), ("system", "s"), ("assistant", "a"))},
     "'messages[1]'"),
    ("messages system column not text", "messages",
     {"messages": msgs(("user", "q"), ("assistant", "a")), "system": ["s"]}, "'system'"),
    ("messages user content null", "messages", {"messages": msgs(("user", None), ("assistant", "a"))},
     "'messages[0]'"),
    ("messages audio", "messages",
     {"messages": msgs(("user", "<audio>q"), ("assistant", "a")), "audios": ["a.wav"]}, "'audios'"),
    ("messages bad JSON text", "messages", {"messages": "[{'role': "}, "'messages'"),
    ("messages both image columns", "messages",
     {"messages": msgs(("user", "<image>q"), ("assistant", "a")), "image": "a.png", "images": ["b.png"]},
     "'images'"),
    ("messages grounding row", "messages",
     {"messages": msgs(("user", "<image>Find <ref-object>"), ("assistant", "<bbox>")), "images": ["a.png"],
      "objects": {"ref": ["x"], "bbox": [[1, 2, 3, 4]]}}, "swift_grounding"),
    ("grounding norm1 boxes", "swift_grounding",
     {"messages": msgs(("user", "<image>Find <ref-object>")), "images": ["a.png"],
      "objects": {"ref": ["x"], "bbox": [[0.1, 0.2, 0.3, 0.4]], "bbox_type": "norm1"}}, "'objects.bbox_type'"),
    ("grounding no objects", "swift_grounding", {"messages": msgs(("user", "<image>Find it")), "images": ["a.png"]},
     "'objects'"),
    ("grounding legacy objects list", "swift_grounding",
     {"messages": msgs(("user", "<image>Find <ref-object>")), "images": ["a.png"],
      "objects": '[{"caption": "guy in red", "bbox": [138, 136, 235, 359], "bbox_type": "real", "image": 0}]'},
     "'objects'"),
    ("grounding point", "swift_grounding",
     {"messages": msgs(("user", "<image>Click <ref-object>")), "images": ["a.png"],
      "objects": {"ref": ["Chrome"], "bbox": [[615, 226]]}}, "'objects.bbox[0]'"),
    ("grounding coordinate not a number", "swift_grounding",
     {"messages": msgs(("user", "<image>Find <ref-object>")), "images": ["a.png"],
      "objects": {"ref": ["x"], "bbox": [[1, 2, "three", 4]]}}, "'objects.bbox[0][2]'"),
    ("grounding other image", "swift_grounding",
     {"messages": msgs(("user", "<image><image>Find <ref-object>")), "images": ["a.png", "b.png"],
      "objects": {"ref": ["x"], "bbox": [[1, 2, 3, 4]], "image_id": [1]}}, "'objects.image_id'"),
    ("grounding refs missing", "swift_grounding",
     {"messages": msgs(("user", "<image><ref-object> left of <ref-object>")), "images": ["a.png"],
      "objects": {"ref": ["x"], "bbox": [[1, 2, 3, 4]]}}, "'objects.ref'"),
    ("grounding boxes missing", "swift_grounding",
     {"messages": msgs(("user", "<image>Find <ref-object>"), ("assistant", "<bbox><bbox>")), "images": ["a.png"],
      "objects": {"ref": ["x"], "bbox": [[1, 2, 3, 4]]}}, "'objects.bbox'"),
    ("grounding region captioning", "swift_grounding",
     {"messages": msgs(("user", "<image>What is at <bbox>?"), ("assistant", "<ref-object>")), "images": ["a.png"],
      "objects": {"ref": ["x"], "bbox": [[1, 2, 3, 4]]}}, "'messages'"),
    ("grounding labelled detection", "swift_grounding",
     {"messages": msgs(("user", "<image>Task: Object Detection"), ("assistant", "<ref-object><bbox>")),
      "images": ["a.png"], "objects": {"ref": ["cat"], "bbox": [[1, 2, 3, 4]]}}, "'messages'"),
    ("grounding solution column", "swift_grounding",
     {"messages": msgs(("user", "<image>Find <ref-object>")), "images": ["a.png"], "solution": [1, 2, 3, 4],
      "objects": {"ref": ["x"], "bbox": [[1, 2, 3, 4]]}}, "'solution'"),
]


@pytest.mark.parametrize(("fmt", "row", "needle"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_rows(fmt: str, row: dict, needle: str) -> None:
    with pytest.raises(FormatError) as info:
        adapt(row, fmt)
    message = str(info.value)
    assert needle in message
    assert "field '" in message and "expected" in message


def test_every_format_has_malformed_cases() -> None:
    counts = {name: sum(c[1] == name for c in BAD) for name in FORMATS}
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        ("easyr1", {"images": [{"bytes": None, "path": None, "blob": BIG}], "problem": "q", "answer": "1"}),
        ("vlm_r1", {"image": "a.png", "problem": ["q" * 100_000], "solution": "a"}),
        ("trl", {"prompt": [{"role": "user", "content": BIG}], "solution": "a"}),
        ("messages", {"messages": "x" * 100_000}),
        ("swift_grounding", {"messages": msgs(("user", "<image>Find <ref-object>")), "images": ["a.png"],
                             "objects": {"ref": ["x"], "bbox": [list(range(100_000))]}}),
    ],
    ids=["bytes", "long problem", "bytes content", "long JSON text", "long box"],
)
def test_huge_values_are_cut_short(fmt: str, row: dict) -> None:
    with pytest.raises(FormatError) as info:
        adapt(row, fmt)
    message = str(info.value)
    assert len(message) < 400 and "..." in message


def test_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(FormatError, match="unknown format 'llava'") as info:
        adapt({"problem": "q"}, "llava")
    assert all(name in str(info.value) for name in FORMATS)
    with pytest.raises(FormatError, match="unknown format"):
        adapt({"problem": "q"}, ["trl"])  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="unknown format"):
        format_help("alpaca")


def test_format_name_spelling() -> None:
    row = {"image": "a.png", "problem": "q", "solution": "a"}
    assert adapt(row, "VLM-R1") == adapt(row, "vlm_r1") == row


def test_row_must_be_a_dict() -> None:
    for fmt in FORMATS:
        with pytest.raises(FormatError, match="row: expected a dict"):
            adapt([("problem", "q")], fmt)  # type: ignore[arg-type]


def test_format_help() -> None:
    for name in FORMATS:
        text = format_help(name)
        assert isinstance(text, str) and len(text) > 100 and "\n" not in text


def test_import_is_light() -> None:
    code = ("import json, sys, mmreason.data; base = set(sys.modules); import mmreason.data.formats; "
            "print(json.dumps([sorted({m.split('.')[0] for m in set(sys.modules) - base}), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    new_modules, torch_loaded = json.loads(out)
    heavy = {"torch", "numpy", "PIL", "transformers", "datasets", "pandas", "pyarrow", "av"}
    assert not set(new_modules) & heavy and not torch_loaded, new_modules
