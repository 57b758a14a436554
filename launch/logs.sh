#!/usr/bin/env bash
# Streams the training log of worker 0 (the one that prints progress), or of --worker=N / --worker=all.
# Settings: launch/common.sh. Example:
#   launch/logs.sh --tpu=dream-h --zone=us-east5-a
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
ssh_workers "$WORKER" "tail -n +1 -F $REMOTE_LOG"
