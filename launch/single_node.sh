#!/usr/bin/env bash
# Train on this node: Ray is started locally by the training entry.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'TXT'
usage: launch/single_node.sh [--gpus N] [--dry-run] RECIPE [key=value ...]

Runs `python -m mixed_r1_verl.main recipe=RECIPE` on this node with trainer.nnodes=1 and
trainer.n_gpus_per_node=N (default: the GPUs nvidia-smi lists). Extra key=value arguments are
verl/Hydra overrides and win over the recipe.

  --gpus N    GPUs to use on this node
  --dry-run   print the command instead of running it
  -h, --help  this text

Environment: PYTHON (default python3), MIXED_R1_DATA (converted data directory).
Example: launch/single_node.sh smoke
TXT
}

count_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --list-gpus | wc -l
    else
        echo 0
    fi
}

dry_run=0
gpus=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift ;;
        --gpus) gpus="${2:?--gpus needs a number}"; shift 2 ;;
        -*) reject_option "$1" ;;
        *) break ;;
    esac
done
require_recipe $#
recipe="$1"
shift
gpus="${gpus:-$(count_gpus)}"

cmd=("${PYTHON:-python3}" -m mixed_r1_verl.main "recipe=${recipe}" trainer.nnodes=1 "trainer.n_gpus_per_node=${gpus}" "$@")
print_or_exec "${cmd[@]}"
