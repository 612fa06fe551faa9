"""BMAS on a GPU inside training (issue check 7).

- In the reward workers (`bmas_device=cuda`): the resumed smoke run of test_gpu_training scores
  open_ended with it; its per-task error rate must be 0.
- On a GPU actor of its own (`bmas_num_gpus`): on a one-GPU node verl's resource pool holds the whole
  GPU, so the request either fits (the step trains with no open_ended reward errors) or the run must
  stop with an error that names `bmas_num_gpus`, never hang and never train on error rewards.
"""

from gpu_checks import assert_succeeded, output_lines, skip_if_out_of_time

from mixed_r1_verl.run_logs import metrics_log_path, read_metrics_log, smoke_training, task_metrics

BMAS_GPU_SETTING = "bmas_num_gpus"
# What the run says when Ray has no GPU for the BMAS actor (embedding_service.no_gpu_for_bmas); Hydra's own
# "Error executing job with overrides: [...bmas_num_gpus...]" follows any failure, so it tells nothing.
NO_GPU_FOR_BMAS = f"reward.reward_kwargs.{BMAS_GPU_SETTING}=0.1: Ray cannot give the BMAS embedding actor"


def lines_saying(text: str, run) -> list[str]:
    return [line for line in output_lines(run) if text in line]


def open_ended_errors(steps: dict) -> list[float]:
    return [task_metrics(metrics, "mixed_r1").get("open_ended", {}).get("error/mean") for metrics in steps.values()]


def test_bmas_on_the_gpu_in_reward_workers_scores_without_errors(smoke_resumed_run, gpu_out):
    assert_succeeded(smoke_resumed_run)
    errors = open_ended_errors(read_metrics_log(metrics_log_path(gpu_out, smoke_resumed_run.name)))
    assert errors and all(error == 0 for error in errors), f"open_ended error/mean per step: {errors}"


def test_bmas_gpu_actor_trains_or_fails_clearly(gpu_out):
    run = smoke_training(
        "smoke_bmas_gpu_actor",
        gpu_out,
        f"++reward.reward_kwargs.{BMAS_GPU_SETTING}=0.1",
        "trainer.total_training_steps=1",
        "trainer.save_freq=-1",
    )
    skip_if_out_of_time(run)
    assert run.returncode != 124, f"the run hung; end of {run.log_path}:\n{run.log_tail()}"
    if run.returncode == 0:
        errors = open_ended_errors(read_metrics_log(metrics_log_path(gpu_out, run.name)))
        assert errors == [0], f"open_ended error/mean per step: {errors}"
    else:
        assert lines_saying(NO_GPU_FOR_BMAS, run), f"failed otherwise than for want of a GPU:\n{run.log_tail()}"
