"""docs/SCALING.md's table: `--mode=compile` for DREAM-B/L/H/G on TPU pod slices at the paper's batch of 2048.

    python benchmarks/compile_table.py [--scales=B,L,H,G] [--slices=v5e-256,v5p-128,v4-64] [--source=latents]
        [--grad_accum_steps=K] [--set=model.scan_layers=False ...] [--no_header]

Each row is dream_jax.compile.compile_stats of configs/dream_<scale>.py with config.compile_topology and
config.data.source set: the numbers of `python -m dream_jax.main --config=configs/dream_<scale>.py --mode=compile
--config.compile_topology=<topology> --config.data.source=latents`. Rows run one at a time in a child process
whose resident memory is watched: XLA's TPU compiler needs many GiB of host memory for the larger scales, and a
row that passes --max_rss_gib is stopped and reported as such rather than starving the machine. Each row also
prints its compile's wall seconds and peak host memory (to stderr). `--set=K=V` overrides a config field (a Python
literal, else a string), e.g. `--set=model.scan_layers=False --set=model.remat=full`. Needs libtpu (the `tpu`
extra).
"""

import argparse
import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Marketing name -> libtpu topology (chips). v5p / v4 names count TensorCores (2 per chip), v5e names chips.
SLICES = {"v5e-256": "v5e:16x16", "v5p-128": "v5p:4x4x4", "v4-64": "v4:2x4x4"}
GIB = 1 << 30

_CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
import importlib
from dream_jax import compile as compile_lib
config = importlib.import_module("configs.dream_{scale}").get_config()
config.compile_topology = {topology!r}
config.data.source = {source!r}
config.grad_accum_steps = {accum} or config.grad_accum_steps
from dream_jax import base_config
for assignment in {overrides!r}:
    base_config.apply_override(config, assignment)
print("STATS " + json.dumps(compile_lib.compile_stats(config)), flush=True)
"""


def _rss_gib(pid):
    """Resident memory of a process and its children, in GiB (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(entry) != pid and int(fields[1]) != pid:
                continue
            with open(f"/proc/{entry}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return total / GIB


def _child_setup():
    """In the child before exec: 1 GiB stacks for its threads (glibc sizes them by RLIMIT_STACK; XLA's TPU compiler
    recurses deeply on these programs and overflowed the default 8 MiB on DREAM-B), and death with this script
    (Linux prctl PR_SET_PDEATHSIG): a stopped table must not leave a 20 GiB compile running."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 1 << 30
    resource.setrlimit(resource.RLIMIT_STACK, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_row(scale, topology, source, max_rss_gib, accum=0, overrides=None):
    """(stats dict or None, note, seconds, peak GiB) of one compile in a child process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    code = _CHILD.format(repo=REPO, scale=scale.lower(), topology=topology, source=source, accum=accum,
                         overrides=list(overrides or ()))
    start, peak = time.monotonic(), 0.0
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_child_setup)
    while proc.poll() is None:
        peak = max(peak, _rss_gib(proc.pid))
        if peak > max_rss_gib:
            proc.kill()
            proc.wait()
            note = f"stopped: compiling needed > {max_rss_gib:g} GiB of host memory"
            return None, note, time.monotonic() - start, peak
        time.sleep(1)
    out, err = proc.communicate()
    seconds = time.monotonic() - start
    for line in out.splitlines():
        if line.startswith("STATS "):
            return json.loads(line[6:]), "", seconds, peak
    if "STACK OVERFLOW" in err:
        crash = re.search(r"PC: @\s+\S+\s+\(unknown\)\s+(\S+)", err)
        where = f" in `{crash[1]}`" if crash else ""
        return None, f"XLA's TPU compiler crashed (stack overflow{where})", seconds, peak
    last = [line for line in err.splitlines() if line.strip()][-1:] or [f"exit code {proc.returncode}"]
    return None, f"failed: {last[0][:160]}", seconds, peak


def format_row(scale, name, stats, note):
    if stats is None:
        return f"| {scale} | {name} | | | | | | | | {note} |"
    mesh = stats["mesh"]
    per_device = stats["batch_size"] // (mesh["data"] * mesh["fsdp"])
    head = (f"| {scale} | {name} (`{stats['topology']}`, {stats['num_devices']} chips) | "
            f"{mesh['data']} x {mesh['fsdp']} x {mesh['tensor']} | {stats['remat']} | "
            f"{stats['grad_accum_steps']} | {per_device} |")
    if stats["out_of_memory"]:
        return (f"{head} | {stats['temporaries'] / GIB:.2f} | > {stats['hbm'] / GIB:.0f} / {stats['hbm'] / GIB:.0f} | "
                "**no** (XLA: temporaries exceed HBM) |")
    verdict = "yes" if stats["hbm"] and stats["total"] <= stats["hbm"] else "**no**"
    return (f"{head} {stats['arguments'] / GIB:.2f} | {stats['temporaries'] / GIB:.2f} | "
            f"{stats['total'] / GIB:.2f} / {stats['hbm'] / GIB:.0f} | {verdict} |")


HEADER = ("| scale | slice | mesh data x fsdp x tensor | remat | grad accum | batch / chip | arguments GiB | "
          "temporaries GiB | total / HBM GiB | fits |\n|---|---|---|---|---|---|---|---|---|---|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="B,L,H,G")
    parser.add_argument("--slices", default=",".join(SLICES))
    parser.add_argument("--source", default="latents", help="data.source: latents (cached, as docs/LAUNCH.md "
                        "trains) or webdataset (the VAE encodes every batch inside the step)")
    parser.add_argument("--max_rss_gib", type=float, default=14.0)
    parser.add_argument("--grad_accum_steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override (repeatable)")
    parser.add_argument("--no_header", action="store_true", help="rows only (to append to a table)")
    args = parser.parse_args()
    if not args.no_header:
        print(HEADER, flush=True)
    for scale in args.scales.split(","):
        for name in args.slices.split(","):
            stats, note, seconds, peak = run_row(scale, SLICES.get(name, name), args.source, args.max_rss_gib,
                                                 args.grad_accum_steps, args.set)
            print(format_row(scale, name, stats, note), flush=True)
            print(f"  ({scale} on {name}: {seconds:.0f} s, peak host memory {peak:.1f} GiB)", file=sys.stderr,
                  flush=True)


if __name__ == "__main__":
    main()
