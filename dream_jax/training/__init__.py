"""The training job: the step and loop (train.py), the masking schedules (masking.py), the encoder's capacity plan
(capacity.py) and the profiler option (profiler.py)."""
