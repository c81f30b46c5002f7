"""jobbalancer: spread shell commands and stored scripts over a cluster of workers."""

from __future__ import annotations

__version__ = "0.1.0"
