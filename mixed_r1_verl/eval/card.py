"""An evaluation's results written into the evaluated model's card, README.md (`card=true`): the Hub's
`model-index` metadata, one entry per data_source (accuracy: the share of correct answers; format rate, mean
score), and an "Evaluation" section with the per-task table, how the answers were generated and scored, and
the command that repeats it. A later evaluation on the same data (files of the same content) replaces these;
one on other data is added beside.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import date
from pathlib import Path

from mixed_r1_verl.data.model_files import is_hub_id
from mixed_r1_verl.models.model_card import CARD_FILE, STEP_DIR

from .provenance import package_named
from .report import task_table
from .scoring import ALL

TASK_TYPE = "image-text-to-text"
# (summary statistic, the Hub's metric type, its display name). The Hub's accuracy is the share of correct
# answers (RefCOCO's Acc@0.5 for grounding), not the mean reward accuracy (for grounding the mean IoU).
METRICS = (
    ("correct", "accuracy", "accuracy"),
    ("format", "format_rate", "format rate"),
    ("score", "mean_reward", "mean score"),
)
# The sampling settings of the eval command, as a summary records them.
SAMPLING = ("temperature", "top_p", "max_new_tokens", "seed")
BACKEND_NAMES = {"hf": "transformers", "vllm": "vLLM"}
SECTION = "## Evaluation"
# A block's marker names its data files and their content (a card written before names the files alone).
BLOCK = re.compile(
    r"<!-- mixed-r1 eval: (?P<data>.*?)(?: sha256=(?P<sha256>[0-9a-f,]+))? -->\n.*?<!-- /mixed-r1 eval -->\n*",
    re.DOTALL,
)
# The reward accuracy a task's mean is of, where it is no 0/1 verdict.
MEAN_OF = {"grounding": "IoU", "open_ended": "BMAS"}
NEXT_SECTION = re.compile(r"^## ", re.MULTILINE)


def card_refusal(model: str) -> str | None:
    """Why `card=true` cannot write into the card of `model`, or None: it must be a local model directory, not
    a checkpoint's Hugging Face copy (its export holds the card users publish), with a card that reads."""
    path = Path(model)
    if not path.is_dir():
        hub = "a hub id's snapshot in the cache is not the copy you publish; " if is_hub_id(model) else ""
        return f"card=true writes into a local model directory's README.md, and {model!r} is none: {hub}pass one"
    if checkpoint := copy_of_checkpoint(path.resolve()):
        return (
            f"card=true writes into the card of the directory you publish, and {model} is the Hugging Face copy of "
            f"checkpoint {checkpoint}: export it (python -m mixed_r1_verl.export checkpoint=... out_dir=...) and "
            "evaluate the export"
        )
    try:
        read_card(model)
    except ValueError as error:
        return str(error)
    return None


def copy_of_checkpoint(path: Path) -> str | None:
    """The checkpoint (`global_step_N`) whose Hugging Face copy `path` is (SFT's `global_step_N/huggingface`,
    GRPO's `global_step_N/actor/huggingface`), or None."""
    if path.name != "huggingface":
        return None
    step = path.parent.parent if path.parent.name == "actor" else path.parent
    return step.name if STEP_DIR.fullmatch(step.name) else None


def read_card(model: str):
    """The model directory's card (huggingface_hub's ModelCard), a new one where it has none; a card whose
    metadata cannot be read is refused, naming it."""
    import yaml
    from huggingface_hub import ModelCard

    card_file = Path(model) / CARD_FILE
    if not card_file.is_file():
        name = Path(model).resolve().name
        return ModelCard(f"---\nlibrary_name: transformers\npipeline_tag: {TASK_TYPE}\n---\n\n# {name}\n")
    try:
        return ModelCard(card_file.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(
            f"{card_file}: its metadata cannot be read ({' '.join(str(error).split())}); mend it, or move it away "
            "for card=true to write a new card"
        ) from None


def data_names(summary: dict) -> str:
    return ", ".join(Path(path).name for path in summary["run"]["data"])


def data_content(summary: dict) -> str:
    """The data by content: its files' sha256, sorted, comma-separated. What keys a card's results: two
    benchmarks each converted to a `val.parquet` are two data, one file copied under another name is one."""
    return ",".join(sorted(entry["sha256"] for entry in summary["run"]["data_files"]))


def eval_results(summary: dict) -> list:
    """The Hub's evaluation results of a summary: per data_source, its accuracy (the share of correct
    answers), format rate and mean score, each with the data files' names as its split and their content
    (`data_content`) as its revision (results on other data of the same sources stay apart)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=stats["task"],
            dataset_type=source,
            dataset_name=source,
            dataset_split=data_names(summary),
            dataset_revision=data_content(summary),
            metric_type=metric,
            metric_name=label,
            metric_value=round(stats[statistic], 4),
        )
        for source, stats in summary["data_sources"].items()
        for statistic, metric, label in METRICS
    ]


def shown_model(value: str, model: str, name: str) -> str:
    """A model setting as the card names it: the card's own model by its name, a local directory by its
    name (the card is published without the paths of the machine that evaluated it), a hub id as it is."""
    if Path(value).resolve() == Path(model).resolve():
        return name
    return value if is_hub_id(value) else Path(value).name


def how_evaluated(summary: dict, model: str, name: str) -> str:
    run = summary["run"]
    sampling, generator = run["sampling"], run["generator"]
    files = ", ".join(f"`{Path(entry['path']).name}` (sha256 `{entry['sha256'][:12]}`)" for entry in run["data_files"])
    temperature, top_p = sampling["temperature"], sampling["top_p"]
    decoding = "greedy" if temperature == 0 else f"temperature {temperature}, top-p {top_p}"
    options = {option: value for option, value in run["reward_kwargs"].items() if option != "embedding_model"}
    rewards = ", ".join(f"{option} {value}" for option, value in options.items()) or "default settings"
    embedding = run["reward_kwargs"].get("embedding_model")
    bmas = f"; open_ended by BMAS over the token embeddings of `{shown_model(embedding, model, name)}`" if (
        embedding and "open_ended" in summary["tasks"]
    ) else ""
    engine = "".join(f", {name} {value}" for name, value in generator.get("engine_arguments", {}).items())
    return (
        f"{summary['tasks'][ALL]['n']} records of {files}, answered by {BACKEND_NAMES[generator['backend']]} "
        f"(dtype {generator['dtype']}{engine}), {decoding}, at most {sampling['max_new_tokens']} new tokens, seed "
        f"{sampling['seed']}; scored with the Mixed-R1 training rewards ({rewards}{bmas}) by "
        f"{package_named(run['code']['version'])} on {date.today().isoformat()}.{metrics_note(summary)}"
    )


def metrics_note(summary: dict) -> str:
    """What the accuracies measure: the model-index's is the table's `correct`, at each task's threshold; the
    table's `accuracy` is the mean reward accuracy (for grounding the IoU, 0 or 1 with `iou_threshold`)."""
    run = summary["run"]
    thresholds = run.get("correct_thresholds")
    at = f" ({', '.join(f'{task} {value:g}' for task, value in thresholds.items())})" if thresholds else ""
    means = [
        f"for {task} the {name}" for task, name in MEAN_OF.items()
        if task in summary["tasks"] and not (task == "grounding" and "iou_threshold" in run["reward_kwargs"])
    ]  # fmt: skip
    mean = f" ({', '.join(means)})" if means else ""
    return (
        f" Accuracy in the model-index is the table's `correct`: the share of answers whose reward accuracy "
        f"reaches their task's threshold{at}; the table's `accuracy` is the mean reward accuracy{mean}."
    )


def repeat_command(summary: dict, model: str, name: str) -> str:
    """The eval command of the run, with every setting that shapes its numbers besides the defaults: its
    sampling and reward options (an embedding model other than the evaluated one by name). A card's run
    scores whole data files (no `limit`)."""
    run = summary["run"]
    sampling = " ".join(f"{key}={run['sampling'][key]}" for key in SAMPLING)
    paths = [Path(path).name for path in run["data"]]
    data = paths[0] if len(paths) == 1 else f"[{','.join(paths)}]"
    options = []
    for option, value in run["reward_kwargs"].items():
        if option == "embedding_model":
            shown = shown_model(value, model, name)
            if shown != name:
                options.append(f"embedding_model={shown}")
        else:
            options.append(command_setting(option, value))
    generator = run["generator"]
    if generator["backend"] == "vllm":
        engine = {**({"dtype": generator["dtype"]} if generator["dtype"] != "auto" else {}),
                  **generator.get("engine_arguments", {})}  # fmt: skip
        options += [
            f"vllm_kwargs.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in engine.items()
        ]
    return (
        f"python -m mixed_r1_verl.eval data={data} model={name} backend={generator['backend']} "
        + " ".join([sampling, *options])
        + f" out_dir=eval/{name}"
    )


def command_setting(option: str, recorded: str) -> str:
    """`option=value` as the command line takes it; a per-task mapping, recorded as Python writes a dict,
    in YAML's flow style and quoted for the shell."""
    try:
        value = ast.literal_eval(recorded)
    except (ValueError, SyntaxError):
        return f"{option}={recorded}"
    if isinstance(value, dict):
        return f"'{option}={{{', '.join(f'{task}: {weight}' for task, weight in value.items())}}}'"
    return f"{option}={value}"


def results_block(summary: dict, model: str, name: str) -> str:
    data, sources = data_names(summary), ", ".join(summary["data_sources"])
    return (
        f"<!-- mixed-r1 eval: {data} sha256={data_content(summary)} -->\n### On {data} ({sources})\n\n"
        f"{how_evaluated(summary, model, name)}\n\n"
        f"{task_table(summary)}\n\n```\n{repeat_command(summary, model, name)}\n```\n<!-- /mixed-r1 eval -->\n\n"
    )


def with_results_section(text: str, block: str, replaced) -> str:
    """The card's text with `block` last in its Evaluation section, in place of the earlier blocks that
    `replaced(found)` picks (a match of BLOCK); a card without the section gets it before "## Use", else at its
    end."""
    text = BLOCK.sub(lambda found: "" if replaced(found) else found.group(0), text)
    if f"\n{SECTION}\n" not in text:
        use = text.find("\n## Use\n")
        at = use + 1 if use >= 0 else len(text)
        text = f"{text[:at].rstrip()}\n\n{SECTION}\n\n{text[at:]}"
    after = NEXT_SECTION.search(text, text.index(f"\n{SECTION}\n") + len(SECTION) + 2)
    end = after.start() if after else len(text)
    return f"{text[:end].rstrip()}\n\n{block}{text[end:]}".rstrip() + "\n"


def record_in_card(model: str, summary: dict) -> Path:
    """Writes the summary's results into the card of the evaluated model directory (a new card where it has
    none) and returns its path."""
    card_file = Path(model) / CARD_FILE
    name = Path(model).resolve().name
    card = read_card(model)
    names, content, sources = data_names(summary), data_content(summary), set(summary["data_sources"])
    results = card.data.eval_results or []
    # Written before results named their data's content (no revision): those of the same files' names, or of no
    # files (no split), are replaced for these sources; their section block when all its sources are.
    unkeyed = {
        result.dataset_type for result in results if result.dataset_revision is None and result.dataset_split == names
    }  # fmt: skip

    def replaced_result(result) -> bool:
        if result.dataset_type not in sources:
            return False
        return result.dataset_revision == content if result.dataset_revision else result.dataset_split in (None, names)

    def replaced_block(found) -> bool:
        if found.group("sha256"):
            return found.group("sha256") == content
        return found.group("data") == names and unkeyed <= sources

    card.data.eval_results = [result for result in results if not replaced_result(result)] + eval_results(summary)
    card.data.model_name = card.data.model_name or name
    card.text = with_results_section(card.text, results_block(summary, model, name), replaced_block)
    card_file.write_text(str(card), encoding="utf-8")
    return card_file
