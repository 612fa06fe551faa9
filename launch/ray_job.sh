#!/usr/bin/env bash
# Submit a training run to a running Ray cluster with `ray job submit`.
#
# Plugin registration on every node: verl imports the modules named in VERL_USE_EXTERNAL_MODULES in
# every process it starts (driver, task runner, workers, reward workers). The job's runtime env ships
# this checkout as the working dir (Ray puts it on PYTHONPATH everywhere) and sets that variable, so
# `mixed_r1`, `mixed_r1_sync` and `mixed_r1_single_turn` register on nodes where the package is not
# pip-installed, without a per-job pip install. Entry points (`verl.plugins`) alone would need the package
# installed on each node.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PLUGIN_MODULES="mixed_r1_verl.verl_adapter.reward_manager,mixed_r1_verl.verl_adapter.trainer,mixed_r1_verl.verl_adapter.agent_loop,mixed_r1_verl.verl_adapter.internvl"
# The variables the recipes and conf/ read (`oc.env`), then those of Hugging Face and verl's file logger.
FORWARDED_ENV=(MIXED_R1_DATA MIXED_R1_DATA_INTERNVL MIXED_R1_DATA_QWEN3VL MIXED_R1_LEARN_DIR MIXED_R1_SMOKE_DIR
    HF_HOME HF_HUB_OFFLINE VERL_FILE_LOGGER_ROOT VERL_FILE_LOGGER_PATH)

usage() {
    cat <<'TXT'
usage: launch/ray_job.sh [options] RECIPE [key=value ...]

Submits `python -m mixed_r1_verl.main recipe=RECIPE` to an existing Ray cluster. The options may also
follow the recipe.

  --address URL        Ray dashboard address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)
  --nnodes N           sets trainer.nnodes (default: the recipe's)
  --gpus-per-node G    sets trainer.n_gpus_per_node (default: the recipe's)
  --working-dir DIR    code shipped to every node (default: this checkout)
  --no-wait            return after submission instead of following the logs
                       (otherwise exits with the job's exit code, 143 for a stopped job)
  --dry-run            print the command instead of running it
  -h, --help           this text

Data and model paths must be readable from every node (shared file system); relative paths are
resolved in the job's working dir, a node-local copy: give trainer.default_local_dir and
VERL_FILE_LOGGER_ROOT (or VERL_FILE_LOGGER_PATH) as absolute paths, shared with --nnodes > 1. The job
runs `python` as the head's PATH finds it (start the head with the environment active). Forwarded when set:
MIXED_R1_DATA MIXED_R1_DATA_INTERNVL MIXED_R1_DATA_QWEN3VL MIXED_R1_LEARN_DIR MIXED_R1_SMOKE_DIR HF_HOME
HF_HUB_OFFLINE VERL_FILE_LOGGER_ROOT VERL_FILE_LOGGER_PATH.

Ray >= 2.60 clusters use token authentication: the token of the cluster (the head's ~/.ray/auth_token)
must be here in RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; the launcher then
sets RAY_AUTH_MODE=token, which `ray job submit` needs to send it. RAY_AUTH_MODE set by you wins.
Example: launch/ray_job.sh --address http://head:8265 --nnodes 4 --gpus-per-node 8 qwen25vl_32b
TXT
}

runtime_env_json() {
    local working_dir="$1"
    local env_args=("VERL_USE_EXTERNAL_MODULES=${PLUGIN_MODULES}")
    local name
    for name in "${FORWARDED_ENV[@]}"; do
        if [[ -n "${!name:-}" ]]; then
            env_args+=("${name}=${!name}")
        fi
    done
    "${PYTHON:-python3}" - "$working_dir" "${env_args[@]}" <<'PY'
import json
import os
import re
import subprocess
import sys


def git_ignored(directory):
    """What git ignores in the directory, as patterns anchored to it. Ray reads .gitignore and .rayignore
    files itself, but not .git/info/exclude or the user's global excludes."""
    try:
        command = ["git", "-C", directory, "ls-files", "--others", "--ignored", "--exclude-standard", "--directory"]
        listing = subprocess.run([*command, "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    paths = os.fsdecode(listing).split("\0")
    return ["/" + re.sub(r"([\\*?\[])", r"\\\1", path.rstrip("/")) for path in paths if path]


working_dir, *assignments = sys.argv[1:]
env_vars = dict(item.split("=", 1) for item in assignments)
excludes = ["/.git", "/.venv", "/outputs", "/checkpoints", "/data", "*.parquet", "__pycache__"]
excludes += [pattern for pattern in git_ignored(working_dir) if pattern not in excludes]
print(json.dumps({"working_dir": working_dir, "excludes": excludes, "env_vars": env_vars}))
PY
}

# Ray clients send the cluster's token only with RAY_AUTH_MODE=token; a token-auth head refuses them otherwise.
enable_ray_token_auth() {
    if [[ -n "${RAY_AUTH_MODE:-}" ]]; then
        return
    fi
    local token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        token_file="RAY_AUTH_TOKEN"
    fi
    if [[ "$token_file" == RAY_AUTH_TOKEN || -s "$token_file" ]]; then
        export RAY_AUTH_MODE=token
        echo "# RAY_AUTH_MODE=token (token from $token_file)"
    else
        echo "# no Ray auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): a cluster with" \
            "token authentication will refuse the job; copy the head's ~/.ray/auth_token here" >&2
    fi
}

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
working_dir="$REPO_ROOT"
dry_run=0
wait_flag=()
topology=()
take_option() {
    case "$1" in
        --dry-run) dry_run=1; option_args=1 ;;
        --no-wait) wait_flag=(--no-wait); option_args=1 ;;
        --address) require_value "$1" "${2:-}" "a URL"; address="$2"; option_args=2 ;;
        --nnodes) require_positive_integer "$1" "${2:-}"; topology+=("trainer.nnodes=$2"); option_args=2 ;;
        --gpus-per-node)
            require_positive_integer "$1" "${2:-}"
            topology+=("trainer.n_gpus_per_node=$2")
            option_args=2
            ;;
        --working-dir)
            require_value "$1" "${2:-}" "a directory"
            if [[ ! -d "$2" ]]; then
                echo "--working-dir $2: no such directory" >&2
                exit 2
            fi
            working_dir="$(cd "$2" && pwd)"
            option_args=2
            ;;
    esac
}
parse_launcher_args "$@"
# The job runs the shipped working dir's recipes where it has them, else those of the package on the nodes,
# taken to be this checkout's.
if [[ -d "$working_dir/recipes" ]]; then
    require_known_recipe "$recipe" "$working_dir/recipes"
else
    require_known_recipe "$recipe" "$REPO_ROOT/recipes"
fi

enable_ray_token_auth
# The command carries the mode: a dry run's line pasted into another shell sends the token too.
auth_env=()
if [[ -n "${RAY_AUTH_MODE:-}" ]]; then
    auth_env=(env "RAY_AUTH_MODE=$RAY_AUTH_MODE")
fi
# The launcher names the job, to ask for its status once it ends.
submission_id="mixed_r1_${recipe}_$(date +%Y%m%d_%H%M%S)_${RANDOM}"
cmd=("${auth_env[@]}" ray job submit --address "$address" --submission-id "$submission_id"
    --runtime-env-json "$(runtime_env_json "$working_dir")" "${wait_flag[@]}"
    -- python -m mixed_r1_verl.main "recipe=${recipe}" "${topology[@]}" "${entry_args[@]}")
if [[ "$dry_run" == 1 ]]; then
    print_or_exec "${cmd[@]}"
    ((${#wait_flag[@]})) || echo "# then exit with the job's exit code, from \`ray job status $submission_id\`"
    exit 0
elif ((${#wait_flag[@]})); then
    exec "${cmd[@]}"
fi

# `ray job submit` exits 1 for a failed job and 0 for any other end, a stopped one's too: the launcher exits
# with the entry's exit code, read from the job's status, and 143 for a stopped job.
submitted=0
"${cmd[@]}" || submitted=$?
if ! status="$("${auth_env[@]}" ray job status --address "$address" "$submission_id" 2>&1)"; then
    ((submitted)) || echo "cannot read the status of job $submission_id: ${status##*$'\n'}" >&2
    exit "$((submitted ? submitted : 1))"
fi
if [[ "$status" =~ failed\ with\ exit\ code\ (-?[0-9]+) ]]; then
    exit_code="${BASH_REMATCH[1]}"
    exit "$((exit_code < 0 ? 128 - exit_code : exit_code))"  # Ray gives -N for a driver killed by signal N
elif [[ "$status" == *"' was stopped"* ]]; then
    echo "job $submission_id was stopped (exit code 143)" >&2
    exit 143
elif [[ "$status" != *"' succeeded"* ]]; then
    # A job that failed before its command ran (`ray job submit` said why), or one still running.
    ((submitted)) || echo "$status" >&2
    exit "$((submitted ? submitted : 1))"
fi
