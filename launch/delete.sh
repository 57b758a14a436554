#!/usr/bin/env bash
# Deletes the TPU VM (with --queued: its queued resource, and the VM with it). The workdir on GCS is kept.
# Settings: launch/common.sh. Example:
#   launch/delete.sh --tpu=dream-h --zone=us-east5-a --queued
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
location_flags
if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$TPU-qr" "${LOCATION[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU" "${LOCATION[@]}" --quiet
fi
