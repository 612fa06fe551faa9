"""What the `mixed_r1` reward manager costs a training step, measured where training runs it: verl 0.9.1's
reward loop (CPU Ray reward workers, local Ray) scoring one step's responses, against a constant reward
(verl's naive manager with a custom function returning 0.0, the baseline of `gpu_figures.py training`)
on the same responses with the same number of reward workers.

    python benchmarks/reward_loop.py [--recipes smoke,qwen25vl_7b] [--workers N] [--repeats 5]
                                     [--gpu-step-seconds S]

Each recipe's config is composed as training composes it (its reward settings, reward.num_workers and
data.train_batch_size x rollout.n responses), with the tiny Qwen2.5-VL as the policy. Responses are sent
as training sends them: verl's agent-loop worker (`_compute_score`, here in this process) makes one Ray
call per response to a randomly chosen reward worker. The whole batch is sent at once, as if every rollout
finished together; in training they finish over the generation and are scored while it goes on, so a step
waits for about this at most. Responses: 300-1,000 words of thinking, then an answer (the tiny model's
512-token vocabulary splits them into more token ids than Qwen2.5's would); the four tasks in equal shares,
open_ended scored with BMAS on the tiny model's embedding table (Qwen2.5-VL-7B's is far larger:
`python benchmarks/bmas.py` times BMAS at that size). The two rewards' loops run side by side and take
turns, so that a machine busier for a while slows both alike; reward-worker start-up is not timed.
"""

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import ray
from hydra import compose, initialize_config_dir
from local_ray import local_ray
from transformers import AutoTokenizer
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
from verl.experimental.reward_loop.reward_loop import RewardLoopManager

from mixed_r1_verl.main import PRIMARY_CONFIG, config_dir, register_recipes
from mixed_r1_verl.models.tiny_qwen25vl import build_tiny_qwen25vl
from mixed_r1_verl.rewards.embeddings import load_input_embeddings
from mixed_r1_verl.verl_adapter.trainer import wait_for_reward_workers

CONSTANT_REWARD = '''def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return 0.0
'''
TARGET_RATIO = 1.02
WORDS = ("the image shows a chart with several bars and the tallest one reaches about value while the "
         "smallest is near zero so we compare them carefully and check the legend axis label region box "
         "object left right top bottom person dog cat bicycle street").split()
CAPTION = "A man in a red jacket rides a bicycle down a wet city street past a row of parked cars."
# task -> (data_source, ground truth, extra_info, answers a policy gives: right, near and wrong)
CASES = {
    "matching": [
        ("mmbench", "B", {"options": ["a red circle", "a blue square", "a green triangle", "a star"]},
         ["B", "The answer is B", "A", "a blue square"]),
        ("pope", "yes", {}, ["yes", "No", "Yes, there is one."]),
    ],
    "chart": [
        ("chartqa", "45%", {}, ["45", "44.5%", "50%"]),
        ("chartqa", "1,234", {}, ["1234", "1,230 units", "12"]),
    ],
    "grounding": [
        ("refcoco", "[120, 80, 360, 300]", {"box_frame": "abs", "frame_size": [640, 480]},
         ["[118, 85, 355, 310]", "[0, 0, 100, 100]", '[{"bbox_2d": [120, 80, 360, 300], "label": "dog"}]']),
        ("refcoco", "[100, 100, 500, 700]", {"box_frame": "norm1000"}, ["[90, 110, 480, 690]", "[600, 0, 900, 90]"]),
    ],
    "open_ended": [
        ("caption", CAPTION, {}, [CAPTION, "A cyclist in red on a rainy street beside parked cars.", "Two dogs play."]),
        ("caption", "The chart shows sales rising every year from 2015 to 2020, fastest in 2019.", {},
         ["Sales grow each year and jump most in 2019.", "A pie chart of market share.", "rising sales"]),
    ],
}


def compose_recipe(recipe: str, model_dir: Path, *overrides: str):
    with initialize_config_dir(str(config_dir()), version_base=None):
        model = f"actor_rollout_ref.model.path={model_dir}"
        return compose(PRIMARY_CONFIG, overrides=[f"recipe={recipe}", model, *overrides])


def constant_reward_overrides(work_dir: Path) -> list[str]:
    reward_file = work_dir / "constant_reward.py"
    reward_file.write_text(CONSTANT_REWARD)
    return [
        "reward.reward_manager.name=naive",
        f"reward.custom_reward_function.path={reward_file}",
        "reward.custom_reward_function.name=compute_score",
    ]


def response_text(rng: random.Random, answers: list[str]) -> str:
    words = rng.randint(300, 1000)
    thinking = " ".join(rng.choice(WORDS) if rng.random() > 0.1 else str(rng.randint(0, 999)) for _ in range(words))
    return f"<think>{thinking}</think>\n<answer>{rng.choice(answers)}</answer>"


def trajectories(tokenizer, prompts: int, group_size: int, seed: int = 0) -> list[tuple[AgentLoopOutput, dict]]:
    """One step's finished rollouts as agent loops hand them to the reward: `group_size` responses to each
    prompt, the prompts cycling through the four tasks."""
    rng = random.Random(seed)
    tasks = list(CASES)
    batch = []
    for prompt in range(prompts):
        task = tasks[prompt % len(tasks)]
        data_source, ground_truth, extra_info, answers = rng.choice(CASES[task])
        messages = [{"role": "user", "content": "What is shown?"}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompt_ids = list(getattr(prompt_ids, "input_ids", prompt_ids))
        for session in range(group_size):
            response_ids = tokenizer(response_text(rng, answers), add_special_tokens=False)["input_ids"]
            response_ids.append(tokenizer.eos_token_id)
            output = AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids,
                                     response_mask=[1] * len(response_ids), num_turns=2, metrics=AgentLoopMetrics())
            fields = {
                "data_source": data_source,
                "reward_model": {"style": "rule", "ground_truth": ground_truth},
                "extra_info": {"task": task, "index": prompt, **extra_info},
                "raw_prompt": messages,
                "uid": f"prompt-{prompt}",
                "session_id": session,
                "index": prompt,
            }
            batch.append((output, fields))
    return batch


def seconds_to_score(agent_loop_worker: AgentLoopWorker, batch) -> float:
    for output, _ in batch:
        output.reward_score = None
        output.extra_fields = {}

    async def score_all():
        await asyncio.gather(*(agent_loop_worker._compute_score([output], kwargs=fields) for output, fields in batch))

    start = time.perf_counter()
    asyncio.run(score_all())
    return time.perf_counter() - start


def reward_infos(batch) -> list[dict]:
    return [output.extra_fields["reward_extra_info"] for output, _ in batch]


class SideBySideRewardLoop(RewardLoopManager):
    """verl's reward loop with its workers named in a Ray namespace of their own: verl names every loop's
    workers `reward_loop_worker_<i>`, so two loops cannot otherwise run side by side."""

    def __init__(self, config, namespace: str):
        self.namespace = namespace
        super().__init__(config)

    def _init_reward_loop_workers(self):
        actor_class = self.reward_loop_workers_class
        self.reward_loop_workers_class = SimpleNamespace(
            options=lambda **options: actor_class.options(namespace=self.namespace, **options)
        )
        super()._init_reward_loop_workers()


@contextmanager
def reward_loop(config, namespace: str) -> Iterator[AgentLoopWorker]:
    """An agent-loop worker sending responses to a reward loop started for `config`, whose workers are
    stopped on leaving."""
    manager = SideBySideRewardLoop(config, namespace)
    try:
        wait_for_reward_workers(manager.reward_loop_workers)
        yield AgentLoopWorker(config, llm_client=None, reward_loop_worker_handles=manager.reward_loop_worker_handles)
    finally:
        for worker in manager.reward_loop_workers:
            ray.kill(worker)


def warm_up(agent_loop_worker: AgentLoopWorker, batch) -> None:
    """Scores the batch once; a response left unscored (a reward error) ends the benchmark."""
    seconds_to_score(agent_loop_worker, batch)
    failed = [info for info in reward_infos(batch) if info.get("error")]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(batch)} responses were not scored, e.g. {failed[0]}")


def interleaved_runs(loops: dict[str, AgentLoopWorker], batch, repeats: int) -> dict[str, list[float]]:
    """Seconds each loop takes to score `batch`, `repeats` times after a warm-up, the loops taking turns in
    alternating order, so that a machine busier for a while slows them alike."""
    for agent_loop_worker in loops.values():
        warm_up(agent_loop_worker, batch)
    runs = {name: [] for name in loops}
    for repeat in range(repeats):
        for name in list(loops)[:: 1 if repeat % 2 == 0 else -1]:
            runs[name].append(seconds_to_score(loops[name], batch))
    return runs


def step_fraction(difference: float, gpu_step_seconds: float | None) -> str:
    allowed = TARGET_RATIO - 1
    if difference <= 0:
        return "mixed_r1 was no slower than the constant reward: no extra cost measurable at this size"
    if gpu_step_seconds is not None:
        return (f"difference / GPU step = {difference:.3f} s / {gpu_step_seconds:g} s = "
                f"{difference / gpu_step_seconds:.2%} (the {TARGET_RATIO} target allows {allowed:.0%})")
    return (f"difference / GPU step = {difference:.3f} s / T_step (no GPU step time given: --gpu-step-seconds); "
            f"at most {allowed:.0%} for T_step >= {difference / allowed:.1f} s")


def seconds_summary(runs: list[float]) -> str:
    return f"{statistics.median(runs):.3f} s ({min(runs):.3f}-{max(runs):.3f})"


def benchmark_recipe(recipe: str, model_dir: Path, overrides: list[str], constant: list[str], args) -> None:
    config = compose_recipe(recipe, model_dir, *overrides)
    constant_config = compose_recipe(recipe, model_dir, *overrides, *constant)
    prompts, group_size = config.data.train_batch_size, config.actor_rollout_ref.rollout.n
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = trajectories(tokenizer, prompts, group_size)
    with reward_loop(config, "mixed_r1") as mixed_r1, reward_loop(constant_config, "constant") as constant:
        runs = interleaved_runs({"mixed_r1": mixed_r1, "constant": constant}, batch, args.repeats)
    difference = statistics.median(runs["mixed_r1"]) - statistics.median(runs["constant"])
    chars = statistics.mean(len(tokenizer.decode(output.response_ids, skip_special_tokens=True)) for output, _ in batch)
    ids = statistics.mean(len(output.response_ids) for output, _ in batch)
    print(f"{recipe}: {prompts} prompts x {group_size} = {len(batch)} responses (mean {chars:.0f} characters, "
          f"{ids:.0f} token ids), {config.reward.num_workers} reward workers")
    print(f"  mixed_r1 {seconds_summary(runs['mixed_r1'])}, constant {seconds_summary(runs['constant'])}, "
          f"difference {difference:.3f} s ({difference / len(batch) * 1000:.2f} ms a response)")
    print(f"  {step_fraction(difference, args.gpu_step_seconds)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="smoke,qwen25vl_7b", help="comma-separated recipe names")
    parser.add_argument("--workers", type=int, help="reward workers (default: each recipe's reward.num_workers)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-step-seconds", type=float, help="a measured GPU step time to relate the difference to")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    register_recipes()
    with tempfile.TemporaryDirectory(prefix="reward_loop_bench_") as work:
        work_dir = Path(work)
        model_dir = build_tiny_qwen25vl(work_dir / "tiny_qwen25vl")
        overrides = [f"reward.num_workers={args.workers}"] if args.workers else []
        workers = max(compose_recipe(recipe, model_dir, *overrides).reward.num_workers for recipe in recipes)
        constant = constant_reward_overrides(work_dir)
        table = load_input_embeddings(str(model_dir))
        # verl's reward workers ask Ray for one CPU each; two loops run side by side, whatever the cores.
        with local_ray(num_cpus=2 * workers):
            print(f"{os.cpu_count()} CPU cores; seconds to score a batch, median (min-max) of {args.repeats} runs "
                  "after a warm-up, the two rewards' reward loops taking turns")
            print(f"open_ended: BMAS on the tiny model's {table.shape[0]:,} x {table.shape[1]:,} embedding table; "
                  "Qwen2.5-VL-7B's is 151,936 x 3,584 (python benchmarks/bmas.py times BMAS at that size)")
            for recipe in recipes:
                benchmark_recipe(recipe, model_dir, overrides, constant, args)


if __name__ == "__main__":
    main()
