#!/usr/bin/env bash
# Creates the TPU VM, directly or through a queued resource (--queued, waits until it is ACTIVE); --spot for spot
# capacity. Settings: launch/common.sh. Example:
#   launch/create.sh --tpu=dream-h --accelerator=v5p-128 --zone=us-east5-a --spot --queued
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
location_flags

capacity=()
if [[ "$SPOT" == 1 ]]; then
  capacity=(--spot)
fi

if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources create "$TPU-qr" --node-id="$TPU" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${capacity[@]}"
  if [[ "$DRY_RUN" != 1 ]]; then
    echo "waiting for queued resource $TPU-qr to become ACTIVE (Ctrl-C stops waiting, not the request)"
    until [[ "$(gcloud compute tpus queued-resources describe "$TPU-qr" "${LOCATION[@]}" \
      --format='value(state.state)')" == ACTIVE ]]; do
      sleep 60
    done
  fi
else
  run gcloud compute tpus tpu-vm create "$TPU" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" "${capacity[@]}"
fi
