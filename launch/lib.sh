# shellcheck shell=bash
# Helpers shared by launch/single_node.sh and launch/ray_job.sh (sourced, not run). The sbatch script
# stays self-contained: sbatch runs a copy of it from Slurm's spool directory.

reject_option() {
    echo "unknown option: $1" >&2
    usage >&2
    exit 2
}

require_recipe() {
    if [[ "$1" -lt 1 ]]; then
        usage >&2
        exit 2
    fi
}

# With dry_run=1 print the command, shell-quoted, instead of running it.
print_or_exec() {
    if [[ "${dry_run:-0}" == 1 ]]; then
        printf '%q ' "$@"
        echo
    else
        exec "$@"
    fi
}
