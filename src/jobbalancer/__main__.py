from __future__ import annotations

from jobbalancer.cli import main

main()
