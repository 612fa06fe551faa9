"""The synthetic set: its answers and images leave a model nothing to score on but what the image shows."""

import json

from mixed_r1_verl.data.synthetic import write_synthetic_dataset


def read_rows(jsonl) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def test_yes_no_questions_are_answered_yes_half_the_time(tmp_path):
    jsonl, _ = write_synthetic_dataset(
        tmp_path, rows_per_task=2000, seed=0, image_size=(96, 72), val_rows_per_task=0, distinct_images_per_task=50
    )
    answers = [row["answer"] for row in read_rows(jsonl) if row["task"] == "matching" and "options" not in row]
    assert len(answers) > 500 and set(answers) == {"yes", "no"}
    assert abs(answers.count("yes") / len(answers) - 0.5) <= 0.04
