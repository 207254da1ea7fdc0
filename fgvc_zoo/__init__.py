"""fgvc_zoo: fine-grained visual classification heads as timm models over any timm backbone.

Importing the package registers every head with timm (`lfd*`, `dpnet*`, `iagn*`).
"""

__version__ = '0.1.0'

from .models import *  # noqa: F401,F403  (registers the heads with timm)
from .onnx import export_onnx, read_onnx_metadata  # noqa: F401  (onnx itself is imported on use)
