"""PNG plots of a data-engine run: rows per stage per task, and pass-rate histograms per task."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mixed_r1_verl.rewards.tasks import task_names  # noqa: E402


def plot_rows_per_stage(stages, path: Path) -> None:
    """Grouped bars: rows of each task in the input and after each stage."""
    columns = [("input", stages[0].rows_in)] + [(stage.name, stage.rows_out) for stage in stages]
    tasks = task_names()
    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(tasks)
    for offset, task in enumerate(tasks):
        counts = [rows.get(task, 0) for _, rows in columns]
        positions = [i + (offset - (len(tasks) - 1) / 2) * width for i in range(len(columns))]
        axes.bar(positions, counts, width, label=task)
    axes.set_xticks(range(len(columns)), [name for name, _ in columns])
    axes.set_ylabel("rows kept")
    axes.set_title("Rows after each stage")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def pass_rate_figure(histograms: dict[str, dict[str, int]], k: int):
    """Per task, one bar per pass rate in the report's histogram (k responses give k + 1 rates: fixed
    bins would merge some of them and split others); empty panels when difficulty was skipped."""
    tasks = task_names()
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), sharey=True)
    for ax, task in zip(axes, tasks):
        counts = histograms.get(task, {})
        ax.bar([float(rate) for rate in counts], list(counts.values()), width=0.8 / k)
        ax.set_xlim(-0.6 / k, 1 + 0.6 / k)
        ax.set_title(task)
        ax.set_xlabel(f"pass rate ({k} responses)")
    axes[0].set_ylabel("prompts")
    figure.tight_layout()
    return figure


def plot_pass_rates(histograms: dict[str, dict[str, int]], k: int, path: Path) -> None:
    figure = pass_rate_figure(histograms, k)
    figure.savefig(path, dpi=100)
    plt.close(figure)
