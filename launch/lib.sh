# shellcheck shell=bash
# Helpers shared by launch/single_node.sh and launch/ray_job.sh (sourced, not run). The sbatch script
# stays self-contained: sbatch runs a copy of it from Slurm's spool directory.

# shellcheck disable=SC2034  # used by the launchers that source this file
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

reject_option() {
    echo "unknown option: $1" >&2
    usage >&2
    exit 2
}

# An option's value ($2, described as $3): given, and not the next option (`--address --dry-run` would
# otherwise take --dry-run for the URL).
require_value() {
    if [[ -z "$2" || "$2" == -* ]]; then
        echo "$1 needs $3" >&2
        exit 2
    fi
}

require_positive_integer() {
    if [[ ! "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "$1 needs a positive whole number, not '$2'" >&2
        exit 2
    fi
}

# Reads the command line into `recipe` and `entry_args` (key=value overrides and the entry's own flags,
# e.g. `--cfg job`). The launcher's options count anywhere, before or after the recipe: the launcher's
# take_option handles them and sets option_args to the arguments it used (0 for none of its options).
parse_launcher_args() {
    recipe=""
    entry_args=()
    while [[ $# -gt 0 ]]; do
        option_args=0
        take_option "$@"
        if ((option_args == 0)); then
            option_args=1
            if [[ -n "$recipe" ]]; then
                entry_args+=("$1")
            elif [[ "$1" == -h || "$1" == --help ]]; then
                usage
                exit 0
            elif [[ "$1" == -* ]]; then
                reject_option "$1"
            else
                recipe="$1"
            fi
        fi
        shift "$option_args"
    done
    if [[ -z "$recipe" ]]; then
        usage >&2
        exit 2
    fi
}

# A recipe is recipes/<name>.yaml of the checkout that runs; recipes/sft/ holds the SFT entry's.
require_known_recipe() {
    local recipes_dir="$2"
    if [[ "$1" == */* || ! -f "$recipes_dir/$1.yaml" ]]; then
        local known=("$recipes_dir"/*.yaml)
        known=("${known[@]##*/}")
        echo "unknown recipe '$1'; the recipes in $recipes_dir: ${known[*]%.yaml}" >&2
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
