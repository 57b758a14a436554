#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings below are read by the scripts that source this file
# Shared by the launch/*.sh scripts: settings from flags or environment variables, and `run`, which prints the
# command instead of running it under --dry-run. Sourced, not run.
#
# Every setting is a flag (--name=VALUE) or an environment variable (DREAM_NAME); flags win.
#   --tpu=NAME            DREAM_TPU          TPU VM name                        (dream-<user>)
#   --zone=ZONE           DREAM_ZONE         zone                               (us-east5-a)
#   --project=ID          DREAM_PROJECT      project ('' = gcloud's default)
#   --accelerator=TYPE    DREAM_ACCELERATOR  accelerator type                   (v5p-128)
#   --runtime=VERSION     DREAM_RUNTIME      TPU VM runtime ('' = the usual one for the accelerator)
#   --spot                DREAM_SPOT=1       spot capacity (may be preempted)
#   --queued              DREAM_QUEUED=1     ask through a queued resource (waits for capacity)
#   --bucket=NAME         DREAM_BUCKET       GCS bucket mounted read-only at /gcs/NAME on every worker (data)
#   --workdir=gs://...    DREAM_WORKDIR      run directory (checkpoints, metrics)   (gs://BUCKET/runs/TPU)
#   --config=FILE         DREAM_CONFIG       config file                        (configs/dream_h.py)
#   --worker=all|N        DREAM_WORKER       which workers logs.sh follows      (0)
#   --python=EXE          DREAM_PYTHON       Python >= 3.11 on the workers      (python3.11)
#   --dry-run             DREAM_DRY_RUN=1    print the gcloud commands, run nothing
# Arguments after `--` go to `python -m dream_jax.main` (train.sh), e.g. -- --config.data.path=/gcs/B/cc12m/*.tar

set -euo pipefail

TPU="${DREAM_TPU:-dream-${USER:-user}}"
ZONE="${DREAM_ZONE:-us-east5-a}"
PROJECT="${DREAM_PROJECT:-}"
ACCELERATOR="${DREAM_ACCELERATOR:-v5p-128}"
RUNTIME="${DREAM_RUNTIME:-}"
SPOT="${DREAM_SPOT:-0}"
QUEUED="${DREAM_QUEUED:-0}"
BUCKET="${DREAM_BUCKET:-}"
WORKDIR="${DREAM_WORKDIR:-}"
CONFIG="${DREAM_CONFIG:-configs/dream_h.py}"
WORKER="${DREAM_WORKER:-0}"
PYTHON="${DREAM_PYTHON:-python3.11}"
DRY_RUN="${DREAM_DRY_RUN:-0}"
EXTRA_ARGS=()
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Paths on the workers, expanded by the remote shell.
REMOTE_DIR="\$HOME/dream_jax"
REMOTE_VENV="\$HOME/dream_venv"
REMOTE_LOG="\$HOME/dream_train.log"

usage_error() {
  echo "error: $*" >&2
  echo "see the comment at the top of launch/common.sh for the settings" >&2
  exit 2
}

parse_flags() {
  while (($#)); do
    case "$1" in
      --tpu=*) TPU="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --project=*) PROJECT="${1#*=}" ;;
      --accelerator=*) ACCELERATOR="${1#*=}" ;;
      --runtime=*) RUNTIME="${1#*=}" ;;
      --spot) SPOT=1 ;;
      --queued) QUEUED=1 ;;
      --bucket=*) BUCKET="${1#*=}" ;;
      --workdir=*) WORKDIR="${1#*=}" ;;
      --config=*) CONFIG="${1#*=}" ;;
      --worker=*) WORKER="${1#*=}" ;;
      --python=*) PYTHON="${1#*=}" ;;
      --dry-run) DRY_RUN=1 ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      *) usage_error "unknown argument: $1" ;;
    esac
    shift
  done
  [[ -n "$TPU" ]] || usage_error "--tpu is empty"
  [[ -n "$ZONE" ]] || usage_error "--zone is empty"
  if [[ -z "$RUNTIME" ]]; then
    case "$ACCELERATOR" in
      v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
      v5litepod-* | v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
      v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
      v4-*) RUNTIME=tpu-ubuntu2204-base ;;
      *) usage_error "no default runtime for --accelerator=$ACCELERATOR; pass --runtime" ;;
    esac
  fi
  if [[ -z "$WORKDIR" && -n "$BUCKET" ]]; then
    WORKDIR="gs://$BUCKET/runs/$TPU"
  fi
}

# gcloud's location flags, shared by every command.
location_flags() {
  LOCATION=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}

# Runs a command, or under --dry-run prints it (shell-quoted, one line) instead.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

# One remote command line from steps, each run only if the previous ones succeeded.
join_steps() {
  local line="$1" step
  shift
  for step in "$@"; do
    line+=" && $step"
  done
  echo "$line"
}

# `gcloud compute tpus tpu-vm ssh` on the given workers with a remote command.
ssh_workers() {
  local workers="$1" command="$2"
  location_flags
  run gcloud compute tpus tpu-vm ssh "$TPU" "${LOCATION[@]}" --worker="$workers" --command="$command"
}
