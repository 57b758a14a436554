#!/usr/bin/env bash
# Installs this working tree on every worker of the TPU VM (a virtualenv with the `tpu` and `gcs` extras) and,
# with --bucket, mounts that bucket read-only at /gcs/BUCKET on every worker (gcsfuse) for the training data.
# Settings: launch/common.sh. Example:
#   launch/setup.sh --tpu=dream-h --zone=us-east5-a --bucket=my-bucket
# shellcheck source-path=SCRIPTDIR
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
location_flags

tarball="${TMPDIR:-/tmp}/dream_jax-$TPU.tar.gz"
run tar --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude='*.egg-info' -czf "$tarball" -C "$REPO" .
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU:dream_jax.tar.gz" "${LOCATION[@]}" --worker=all

steps=(
  "sudo apt-get -qq update"
  "sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y $PYTHON $PYTHON-venv"
  "rm -rf $REMOTE_DIR" "mkdir -p $REMOTE_DIR" "tar -xzf \$HOME/dream_jax.tar.gz -C $REMOTE_DIR"
  "$PYTHON -m venv $REMOTE_VENV"
  "$REMOTE_VENV/bin/pip install -q --upgrade pip"
  "$REMOTE_VENV/bin/pip install -q -e \"${REMOTE_DIR}[tpu,gcs]\""
)
install="$(join_steps "${steps[@]}")"
ssh_workers all "$install"

if [[ -n "$BUCKET" ]]; then
  # gcsfuse from Google's apt repository, as its install guide does; read-only, so training cannot touch the data.
  repo="deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt"
  get_gcsfuse="$(join_steps \
    "echo \"$repo gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list" \
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc" \
    "sudo apt-get -qq update" "sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y gcsfuse")"
  steps=(
    "{ command -v gcsfuse >/dev/null || { $get_gcsfuse; }; }"
    "sudo mkdir -p /gcs/$BUCKET" "sudo chown \$USER /gcs/$BUCKET"
    "{ mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs -o ro $BUCKET /gcs/$BUCKET; }"
  )
  mount="$(join_steps "${steps[@]}")"
  ssh_workers all "$mount"
fi
