#!/usr/bin/env bash
# Starts training on every worker at once (one JAX process per host, joined by jax.distributed), detached from
# the ssh session, logging to ~/dream_train.log on each worker. The workdir is on GCS (checkpoints written by all
# hosts together, metrics by host 0); arguments after `--` go to dream_jax.main. Settings: launch/common.sh.
# Example:
#   launch/train.sh --tpu=dream-h --bucket=my-bucket --config=configs/dream_h.py -- \
#     --config.data.source=latents --config.data.path=/gcs/my-bucket/cc12m-latents
# Rerunning it after a preemption resumes from the newest checkpoint in the workdir.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
[[ -n "$WORKDIR" ]] || usage_error "--workdir=gs://... (or --bucket) is required"

main_args=(--config="$CONFIG" --workdir="$WORKDIR" --distributed "${EXTRA_ARGS[@]}")
quoted="$(printf '%q ' "${main_args[@]}")"
ssh_workers all "cd $REMOTE_DIR && nohup $REMOTE_VENV/bin/python -m dream_jax.main $quoted> $REMOTE_LOG 2>&1 < /dev/null &"
