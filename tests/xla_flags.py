"""The XLA flags of the test session, in a module without side effects: conftest.py sets them for every process
of the session, train_helpers.subprocess_env strips them for optimised runs (scripts that import train_helpers in
a subprocess must not run conftest's environment setup again)."""

# Compile for compile time: the tests' time is compilation (tiny shapes, a few steps). LLVM optimisation level 0
# cuts it by about a third (test_generate.py's two longest tests: 93 s -> 59 s); XLA:CPU's older elemental emitters
# instead of its MLIR fusion emitters, in one LLVM module instead of 32 split for parallel codegen (2 cores, two
# workers), cut it by another ~45% (the smoke test's train step: 13.4 s -> 7.4 s). The one long training run
# (test_learning.py) asks train_helpers.subprocess_env for the default, optimised code, which runs twice as fast.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                "--xla_cpu_parallel_codegen_split_count=1")
