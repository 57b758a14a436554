"""`--config.profile_steps=a,b`: a jax.profiler trace of train steps a..b (1-based, inclusive) in the workdir.

The trace goes to WORKDIR/tensorboard/plugins/profile/<run>/ (the layout TensorBoard's profile plugin and XProf
read), beside the scalars, so `tensorboard --logdir=WORKDIR/tensorboard` shows both. Tracing starts before step a
is dispatched and stops once step b's results are ready, so the trace holds whole steps; compilation is in it only
if a is the first step of the run. Every process of a multi-host job traces its own host. A resumed run that
starts past a traces nothing.
"""

import jax


def parse(text, total_steps):
    """'a,b' -> (a, b); '' -> None; ValueError naming the setting for anything else."""
    if not text:
        return None
    try:
        first, last = (int(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"profile_steps={text!r}: expected two step numbers 'a,b', e.g. '10,12'") from None
    if not 1 <= first <= last <= total_steps:
        raise ValueError(f"profile_steps={text!r}: need 1 <= a <= b <= total steps ({total_steps})")
    return first, last


class StepTrace:
    """Starts and stops the trace around the configured steps; `close` stops one left running (a crash)."""

    def __init__(self, steps, log_dir, start_step):
        self.steps = steps if steps and steps[0] > start_step else None
        self.log_dir = log_dir
        self.active = False

    def before(self, step):
        if self.steps and step == self.steps[0]:
            jax.profiler.start_trace(self.log_dir)
            self.active = True

    def after(self, step, outputs):
        if self.active and step == self.steps[1]:
            jax.block_until_ready(outputs)
            self.close()

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
