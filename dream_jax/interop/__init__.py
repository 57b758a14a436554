"""Interop with PyTorch checkpoints: the frozen VAE / T5 weights read from the user's local diffusers and
transformers files (pretrained.py), the authors' state_dict layout (layout.py, no torch), export/import
(to_pytorch.py) and a standalone PyTorch DREAM (torch_modules.py). torch is imported only by the last two, and only
when called."""
