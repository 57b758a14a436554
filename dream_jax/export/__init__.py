"""PyTorch interop: the authors' state_dict layout (layout.py, no torch), export/import (to_pytorch.py) and a
standalone PyTorch DREAM (torch_modules.py). torch is imported only by the last two, and only when called."""
