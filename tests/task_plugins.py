"""Installed packages that add tasks through the `mixed_r1_verl.tasks` entry point group, written as a
pip install would leave them: a module and its distribution's metadata in one directory on the path."""

from pathlib import Path

from mixed_r1_verl.rewards.tasks import TASK_ENTRY_POINT_GROUP

COUNTING_SOURCE = '''
from mixed_r1_verl.rewards import Task


def counting_accuracy(answer, ground_truth, extra_info):
    """1 for the right count, 0.5 for one off; a count that is no whole number raises."""
    off_by = abs(int(answer) - int(ground_truth))
    return 1.0 if off_by == 0 else 0.5 if off_by == 1 else 0.0


COUNTING = Task("counting", counting_accuracy, "Answer with a single whole number.", correct_threshold=0.5)
'''
COUNTING_INSTRUCTION = "Answer with a single whole number."

VQA_SOURCE = '''
from mixed_r1_verl.rewards import Task


def vqa_accuracy(answer, ground_truth, extra_info):
    """VQA's soft accuracy: a share of `min_matches` (3 unless given) for each annotator who gave the answer."""
    info = extra_info["reward_info"]
    if not isinstance(info["answers"], list):
        raise TypeError(f"answers arrived as {type(info['answers']).__name__}")
    matches = sum(given.lower() == answer.strip().lower() for given in info["answers"])
    return min(1.0, matches / (info["min_matches"] or 3))


VQA = Task(
    "vqa", vqa_accuracy, "Answer with a word or a short phrase.",
    reward_fields={"answers": list[str], "min_matches": int},
)
'''


def write_distribution(root: Path, name: str, source: str, entry_points: dict[str, str]) -> Path:
    """Module `name` with `source`, and distribution `name` declaring `entry_points` (entry name ->
    "module:attribute") in the task group; returns `root`, the directory to put on the path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(source)
    metadata = root / f"{name}-0.1.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{entry} = {target}\n" for entry, target in entry_points.items())
    (metadata / "entry_points.txt").write_text(f"[{TASK_ENTRY_POINT_GROUP}]\n{lines}")
    return root


def write_counting_plugin(root: Path) -> Path:
    return write_distribution(root, "counting_task", COUNTING_SOURCE, {"counting": "counting_task:COUNTING"})


def write_vqa_plugin(root: Path) -> Path:
    return write_distribution(root, "vqa_task", VQA_SOURCE, {"vqa": "vqa_task:VQA"})


def counting_records(synthetic_rows: list[dict], count: int, **fields) -> list[dict]:
    """`count` canonical records of the task `counting` on the synthetic set's grounding images (one shape
    each), with `fields` added to each."""
    shapes = [row for row in synthetic_rows if row["task"] == "grounding"]
    return [
        {"id": f"count-{i}", "task": "counting", "data_source": "shapes", "images": shapes[i % len(shapes)]["images"],
         "problem": f"How many shapes are drawn? ({i})", "answer": "1", **fields}
        for i in range(count)
    ]  # fmt: skip
