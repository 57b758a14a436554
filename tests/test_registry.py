"""evaluation/registry.py: every kind is a module with DEFAULTS, validate and run; settings are completed from the
kind's DEFAULTS, a second instance of a kind runs under its own name, and the library never imports configs/."""

import ast
import os

import ml_collections
import pytest

from dream_jax.evaluation import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind", sorted(registry.KINDS))
def test_every_kind_has_the_interface(kind):
    module = registry.KINDS[kind]
    assert module.DEFAULTS["enabled"] is True and "kind" not in module.DEFAULTS
    assert callable(module.validate) and callable(module.run)


def test_settings_complete_defaults_and_refuse_misspellings():
    s = registry.settings("few_shot", shots=1)
    assert s["shots"] == 1 and s["ways"] == registry.KINDS["few_shot"].DEFAULTS["ways"] and s["kind"] == "few_shot"
    with pytest.raises(ValueError, match=r"evaluator 'few_shot' has no settings \['shot'\]"):
        registry.settings("few_shot", shot=1)
    with pytest.raises(ValueError, match="unknown evaluator kind 'fewshot'"):
        registry.settings("fewshot")


def test_enabled_names_kinds_and_skips_disabled():
    config = ml_collections.ConfigDict(dict(evals=dict(
        probe_a=dict(kind="linear_probe", steps=5), few_shot=dict(enabled=False), zero_shot={})))
    enabled = registry.enabled(config)
    assert [(n, s.kind) for n, s in enabled] == [("probe_a", "linear_probe"), ("zero_shot", "zero_shot")]
    assert enabled[0][1].steps == 5 and enabled[0][1].holdout == registry.KINDS["linear_probe"].DEFAULTS["holdout"]
    config.evals.zero_shot.tempaltes = ()
    with pytest.raises(ValueError, match=r"config.evals.zero_shot has unknown settings \['tempaltes'\]"):
        registry.enabled(config)


def test_the_library_never_imports_configs():
    importers = []
    for folder, _, files in os.walk(os.path.join(ROOT, "dream_jax")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                    if any(n == "configs" or n.startswith("configs.") for n in names):
                        importers.append(os.path.relpath(path, ROOT))
    assert importers == []
