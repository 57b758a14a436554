"""benchmarks/official_step.py: the authors' train step is built by their own main.py from train_dream.sh's flags.

The authors' code is not in this repository (nor downloaded), so a stand-in checkout with their entry points
(`main.get_args_parser`, `main.build_model`, a model called as `model(x, captions, labels, t5_features, est_idx)`)
checks what the benchmark hands them and that each step runs forward, backward and the optimiser.
"""

import os
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import official_step  # noqa: E402
import train_helpers as th  # noqa: E402

MAIN = '''
import argparse

from models import dream

CALLS = []


class _Parser:
    def parse_args(self, argv):
        CALLS.append(list(argv))
        get = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
        return argparse.Namespace(model=get("--model"), img_size=32, vae_stride=8, vae_embed_dim=4, beta1=0.9,
                                  beta2=0.95, weight_decay=0.04, weight_mar_loss=1.0, t5_embed_dim=16)


def get_args_parser():
    return _Parser()


def build_model(args, family):
    assert family == "dream"
    return dream.Stand(args.t5_embed_dim)
'''

MODEL = '''
import torch

SEEN = []


class Stand(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.image = torch.nn.Linear(4, width)
        self.text = torch.nn.Embedding(64, width)
        SEEN.append(self)
        self.initial = None

    def forward(self, imgs, text, labels, text_embedding_t5, est_idx=None, target_rep=None):
        if self.initial is None:
            self.initial = [p.detach().clone() for p in self.parameters()]
        tokens = imgs.flatten(2).transpose(1, 2)
        x = self.image(tokens).mean(1)
        mar = ((x[:, None] - text_embedding_t5.float()) ** 2).mean()
        clip = -(x * self.text(text).mean(1)).sum(-1).mean()
        return mar, clip, None, {}
'''


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "main.py").write_text(textwrap.dedent(MAIN))
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "dream.py").write_text(textwrap.dedent(MODEL))
    yield str(tmp_path)
    for name in ("main", "models", "models.dream"):
        sys.modules.pop(name, None)
    sys.path.remove(str(tmp_path))


def _config(scale="B"):
    config = th.tiny_config()
    config.model.scale = scale
    return config


def test_the_authors_step_runs_their_model_from_their_flags(checkout):
    t5 = dict(d_model=16, d_kv=4, num_heads=2, d_ff=32, num_layers=1, gated=False)
    seconds, device = official_step.measure(checkout, _config(), batch_size=4, mask_ratio=0.75, steps=2, warmup=1,
                                            t5=t5)
    assert seconds > 0 and device == (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
    argv = sys.modules["main"].CALLS[-1]
    assert argv[:len(official_step.TRAIN_DREAM_FLAGS)] == official_step.TRAIN_DREAM_FLAGS
    assert argv[argv.index("--model") + 1] == "dream_base_txt_conditional"
    assert argv[argv.index("--mask_ratio_min") + 1] == "0.75" and argv[argv.index("--mask_ratio_mu") + 1] == "0.75"
    model = sys.modules["models.dream"].SEEN[-1]
    # Three steps of AdamW moved every weight the losses reach.
    assert all(not torch.equal(a, b.detach()) for a, b in zip(model.initial, model.parameters()))


def test_not_a_checkout_and_other_scales_are_one_line_errors(checkout, tmp_path_factory):
    empty = str(tmp_path_factory.mktemp("empty"))
    with pytest.raises(FileNotFoundError, match=r"--official_repo='.*' is not a checkout of the authors' code"):
        official_step.measure(empty, _config(), 4, 0.75, 1, 1, None)
    with pytest.raises(ValueError, match=r"model.scale='tiny': the authors' code has DREAM-B/L/H/G only"):
        official_step.measure(checkout, _config("tiny"), 4, 0.75, 1, 1, None)
