"""Summary tables as markdown, CSV and JSON, and the side-by-side comparison of two runs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from .provenance import settings_differences
from .scoring import ALL

SUMMARY_FILE = "summary.json"
SCORES_FILE = "scores.jsonl"
STAT_COLUMNS = ("n", "accuracy", "correct", "format", "score", "errors")
TRUNCATION_COLUMNS = ("truncated", "truncation_unknown")
COMPARED = ("accuracy", "correct", "format", "score")


def _cell(column: str, value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(header: list[str], rows: list[list], cell: Callable[[str, object], str] = _cell) -> str:
    """A markdown table; `cell(column, value)` writes each value (floats to four decimals by default)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(column, value) for column, value in zip(header, row)) + " |" for row in rows]
    return "\n".join(lines)


def summary_groups(summary: dict) -> list[tuple[str, str, str, dict]]:
    """``(level, name, task, stats)`` of each task, then each data_source."""
    groups = [("task", task, task, stats) for task, stats in summary["tasks"].items()]
    groups += [("data_source", source, stats["task"], stats) for source, stats in summary["data_sources"].items()]
    return groups


def summary_rows(summary: dict) -> list[list]:
    """Flat rows ``[level, name, task, n, accuracy, correct, format, score, errors, truncated,
    truncation_unknown]`` for CSV."""
    columns = (*STAT_COLUMNS, *TRUNCATION_COLUMNS)
    groups = summary_groups(summary)
    return [[level, name, task, *(stats[column] for column in columns)] for level, name, task, stats in groups]


def truncation_cell(stats: dict) -> int | str:
    """A group's responses cut off at the token limit: their count; "unknown" when none of them records
    whether it was (saved generations without `truncated`, or a summary from before it was counted);
    "3, 2 unknown" when 2 of them do not."""
    unknown = stats.get("truncation_unknown", stats["n"])
    if unknown == stats["n"]:
        return "unknown"
    return f"{stats['truncated']}, {unknown} unknown" if unknown else stats["truncated"]


def truncation_note(summary: dict) -> str:
    """A line saying how many responses were cut off at the token limit, how many of those scored 0, and
    which setting to raise; "" when none were."""
    overall = summary["tasks"].get(ALL, {})
    if not overall.get("truncated"):
        return ""
    sampling = (summary.get("run") or {}).get("sampling")
    if sampling:
        limit, setting = f"max_new_tokens={sampling['max_new_tokens']}", "max_new_tokens"
    else:
        limit, setting = "the token limit they were generated with", "the generating run's max_new_tokens"
    return (
        f"Note: {overall['truncated']} of {overall['n']} responses were cut off at {limit} before an end token, "
        f"{overall['truncated_zero_score']} of them scoring 0; raise {setting} to score complete answers.\n\n"
    )


def shown_answer(answer: str, width: int = 24) -> str:
    """An answer for a markdown cell: quoted, shortened to `width` characters, pipes escaped."""
    shown = answer if len(answer) <= width else answer[: width - 1] + "…"
    return repr(shown).replace("|", "\\|")


def answers_markdown(answers: dict) -> str:
    """The answer spread per task (`scoring.answer_spread`)."""
    rows = [
        [task, spread["top_share"], spread["reference_top_share"], spread["distinct"], shown_answer(spread["top_answer"])]
        for task, spread in answers.items()
    ]
    return markdown_table(["task", "top answer share", "reference top share", "distinct answers", "top answer"], rows)


def run_notes(summary: dict) -> str:
    """What the tables alone do not say about the run: saved generations for ids the data lacks."""
    run = summary.get("run") or {}
    unknown = run.get("generations_not_in_data")
    if not unknown:
        return ""
    return (
        f"Note: {unknown['count']} id(s) in {run['generations']} are in none of the data's rows and were not "
        f"scored, e.g. {unknown['first_ids']}\n\n"
    )


def stat_cells(stats: dict) -> list:
    return [*(stats[column] for column in STAT_COLUMNS), truncation_cell(stats)]


def task_table(summary: dict) -> str:
    """The per-task table (`all` last), markdown."""
    rows = [[name, *stat_cells(stats)] for level, name, _, stats in summary_groups(summary) if level == "task"]
    return markdown_table(["task", *STAT_COLUMNS, "truncated"], rows)


def summary_markdown(summary: dict) -> str:
    source_table = markdown_table(
        ["data_source", "task", *STAT_COLUMNS, "truncated"],
        [
            [name, task, *stat_cells(stats)]
            for level, name, task, stats in summary_groups(summary)
            if level == "data_source"
        ],
    )
    return (
        f"{run_notes(summary)}### Per task\n\n{task_table(summary)}\n\n{truncation_note(summary)}"
        f"### Per data_source\n\n{source_table}\n\n"
        f"### Answer spread\n\nShare of responses giving the most common answer, against the same share among the "
        f"references; far above it, the model gives one answer whatever the image.\n\n"
        f"{answers_markdown(summary['answers'])}\n"
    )


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def remove_earlier_results(out_dir: Path) -> None:
    """The scores and summaries an earlier run wrote in out_dir: a run that stops before it writes its own
    leaves none of them beside its generations, where `compare=` would read them as its results."""
    for name in (SCORES_FILE, SUMMARY_FILE, "summary.md", "summary.csv"):
        (out_dir / name).unlink(missing_ok=True)


def write_summary(summary: dict, out_dir: Path) -> None:
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(summary))
    header = ["level", "name", "task", *STAT_COLUMNS, *TRUNCATION_COLUMNS]
    (out_dir / "summary.csv").write_text(_csv(header, summary_rows(summary)))


def summary_path(run: str | Path) -> Path:
    """A run directory's summary.json, or the summary.json path given."""
    path = Path(run)
    return path / SUMMARY_FILE if path.is_dir() else path


def load_summary(run: str | Path) -> dict:
    """A run directory (holding summary.json) or a summary.json path."""
    path = summary_path(run)
    if not path.exists():
        raise FileNotFoundError(f"{run}: no {SUMMARY_FILE}; pass an eval output directory or its {SUMMARY_FILE}")
    return json.loads(path.read_text())


def evaluated_ids(run: str | Path) -> set[str] | None:
    """The ids a run scored, from the scores.jsonl beside its summary.json; None without one."""
    path = summary_path(run).with_name(SCORES_FILE)
    if not path.exists():
        return None
    return {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def record_sets_notice(summaries: list[dict], labels: tuple[str, ...], ids: tuple) -> str:
    """A warning that the runs scored different records (by their ids where every run kept scores.jsonl,
    else by their n per task and data_source), or "" when they scored the same."""
    if None not in ids:
        if all(run_ids == ids[0] for run_ids in ids):
            return ""
        each = ", ".join(f"{label} {len(run_ids)}" for label, run_ids in zip(labels, ids))
        counts = f"{each}, {len(set.intersection(*ids))} in common"
    else:
        first = summaries[0]
        if all(
            group_counts(first, key) == group_counts(summary, key)
            for summary in summaries[1:]
            for key in ("tasks", "data_sources")
        ):
            return ""
        totals = [summary["tasks"].get("all", {}).get("n", 0) for summary in summaries]
        each = ", ".join(f"{label} {total}" for label, total in zip(labels, totals))
        counts = f"{each}; ids not compared: a run has no {SCORES_FILE}"
    return (
        f"Warning: the runs evaluated different records ({counts}); their deltas compare different record "
        "sets, and rows whose n differ are marked in the last column.\n\n"
    )


def settings_notice(summaries: list[dict], labels: tuple[str, ...]) -> str:
    """A warning naming each setting besides the model that a run records and sets otherwise than the first
    run does (data content, limit, reward options, sampling, generator, code), with the first run's value
    and each differing run's, or ""."""
    differing: dict[str, list[str]] = {}
    for label, summary in zip(labels[1:], summaries[1:]):
        for key, first_value, value in settings_differences(summaries[0], summary):
            differing.setdefault(key, [f"{labels[0]} {first_value!r}"]).append(f"{label} {value!r}")
    if not differing:
        return ""
    listed = "; ".join(f"{key}: {', '.join(values)}" for key, values in differing.items())
    return (
        f"Warning: the runs differ in more than the model ({listed}); their deltas measure these "
        "differences too.\n\n"
    )


def group_counts(summary: dict, key: str) -> dict:
    return {name: stats["n"] for name, stats in summary[key].items()}


def compare_rows(summaries: list[dict]) -> list[list]:
    """``[level, name, n of each run, then for accuracy, correct, format and score: each run's value and each
    later run's delta from the first, then each run's truncated]``; a group missing from a run shows blanks
    there, and so does a metric its summary does not hold (`correct` in a summary written before it was)."""
    rows = []
    for level, key in (("task", "tasks"), ("data_source", "data_sources")):
        names = set().union(*(summary[key] for summary in summaries))
        for name in sorted(names, key=lambda name: (name == "all", name)):
            groups = [summary[key].get(name) for summary in summaries]
            row = [level, name, *(stats["n"] if stats else "" for stats in groups)]
            for metric in COMPARED:
                values = [stats.get(metric) if stats else None for stats in groups]
                deltas = [None if None in (values[0], value) else value - values[0] for value in values[1:]]
                row += ["" if value is None else value for value in (*values, *deltas)]
            row += [truncation_cell(stats) if stats else "" for stats in groups]
            rows.append(row)
    return rows


def compare_header(labels: tuple[str, ...]) -> list[str]:
    """Two runs' delta is `Δ <metric>`; with more, each later run's is `Δ <metric> <label>`, from the first."""
    header = ["level", "name", *(f"n {label}" for label in labels)]
    for metric in COMPARED:
        header += [f"{metric} {label}" for label in labels]
        header += [f"Δ {metric}"] if len(labels) == 2 else [f"Δ {metric} {label}" for label in labels[1:]]
    return [*header, *(f"truncated {label}" for label in labels)]


def mark_different_n(header: list[str], rows: list[list], runs: int) -> tuple[list[str], list[list]]:
    """The table with an `n differs` column: "yes" where the runs' n differ."""
    return [*header, "n differs"], [[*row, "yes" if len(set(row[2 : 2 + runs])) > 1 else ""] for row in rows]


def write_comparison(
    summaries: list[dict], labels: tuple[str, ...], out_dir: Path | None, ids: tuple | None = None
) -> str:
    """The side-by-side table of two or more runs, deltas from the first (`ids`: the ids each scored, None
    where unknown), below a warning when they scored different records, and one when settings besides the
    model differ."""
    ids = ids or (None,) * len(summaries)
    header, rows = compare_header(labels), compare_rows(summaries)
    records_notice = record_sets_notice(summaries, labels, ids)
    if records_notice:
        header, rows = mark_different_n(header, rows, len(summaries))
    notice = records_notice + settings_notice(summaries, labels)
    table = notice + markdown_table(header, rows)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.md").write_text(table + "\n")
        (out_dir / "compare.csv").write_text(_csv(header, rows))
        (out_dir / "compare.json").write_text(
            json.dumps({"runs": list(labels), "notice": notice.strip(), "header": header, "rows": rows}, indent=2)
        )
    return table
