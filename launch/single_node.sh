#!/usr/bin/env bash
# Train on this node: Ray is started locally by the training entry.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'TXT'
usage: launch/single_node.sh [--gpus N] [--dry-run] RECIPE [key=value ...]

Runs `python -m mixed_r1_verl.main recipe=RECIPE` on this node with trainer.nnodes=1. The recipe's
trainer.n_gpus_per_node is kept unless this node shows fewer GPUs (CUDA_VISIBLE_DEVICES, else
nvidia-smi): then it trains on those, and says so. Extra key=value arguments are verl/Hydra overrides
and win over the recipe. The options may also follow the recipe.

  --gpus N    GPUs to use on this node (trainer.n_gpus_per_node=N)
  --dry-run   print the command instead of running it
  -h, --help  this text

Environment: PYTHON (default python3), MIXED_R1_DATA (converted data directory).
Example: launch/single_node.sh smoke
TXT
}

# The GPUs CUDA will show the training, or nothing when this node cannot tell.
visible_gpus() {
    if [[ -v CUDA_VISIBLE_DEVICES ]]; then
        # CUDA stops at the first entry that is not a device, e.g. "-1".
        local count=0 device devices
        IFS=, read -ra devices <<<"$CUDA_VISIBLE_DEVICES"
        for device in "${devices[@]}"; do
            [[ -n "$device" && "$device" != -* ]] || break
            count=$((count + 1))
        done
        echo "$count"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --list-gpus | grep -c '^GPU ' || true
    fi
}

recipe_gpus() {
    "${PYTHON:-python3}" -c '
import sys, yaml
recipe = yaml.safe_load(open(sys.argv[1])) or {}
print((recipe.get("trainer") or {}).get("n_gpus_per_node", ""))' "$REPO_ROOT/recipes/$1.yaml"
}

# trainer.n_gpus_per_node to pass, or nothing to keep the recipe's.
gpu_setting() {
    if [[ -n "$gpus" ]]; then
        echo "trainer.n_gpus_per_node=$gpus"
        return
    fi
    local arg
    for arg in "${entry_args[@]}"; do
        [[ ! "$arg" =~ ^\+{0,2}trainer\.n_gpus_per_node= ]] || return 0
    done
    local visible wanted
    visible="$(visible_gpus)"
    [[ "$visible" =~ ^[1-9][0-9]*$ ]] || return 0  # no GPU seen: the entry says what it needs
    wanted="$(recipe_gpus "$recipe")"
    if [[ "$wanted" =~ ^[0-9]+$ ]] && ((wanted > visible)); then
        echo "recipe $recipe asks for $wanted GPUs, this node shows $visible: training on $visible" >&2
        echo "trainer.n_gpus_per_node=$visible"
    fi
}

dry_run=0
gpus=""
take_option() {
    case "$1" in
        --dry-run) dry_run=1; option_args=1 ;;
        --gpus) require_positive_integer --gpus "${2:-}"; gpus="$2"; option_args=2 ;;
    esac
}
parse_launcher_args "$@"
require_known_recipe "$recipe" "$REPO_ROOT/recipes"
gpu_override="$(gpu_setting)"

cmd=("${PYTHON:-python3}" -m mixed_r1_verl.main "recipe=${recipe}" trainer.nnodes=1 ${gpu_override:+"$gpu_override"}
    "${entry_args[@]}")
print_or_exec "${cmd[@]}"
