"""netlang: a declarative language for convolutional networks and a graph compiler."""

from netlang.api import Network, load, loads
from netlang.diagnostics import Diagnostic, NetlangError

__version__ = "0.1.0"
__all__ = ["Diagnostic", "Network", "NetlangError", "load", "loads", "__version__"]
