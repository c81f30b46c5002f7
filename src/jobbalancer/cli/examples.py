"""The example scripts `jobbalancer up` stores on a fresh database (``--no-examples``
skips them): small, harmless, in several interpreters, each with typed parameters, so the
Scripts page and its Run form can be tried at once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from jobbalancer import scripts

EXAMPLES: tuple[dict[str, Any], ...] = (
    {
        "name": "hello",
        "interpreter": "sh",
        "description": "Example: greets someone, a number of times (sh; a string and an int).",
        "content": (
            "# $1 is the name, $2 the count: typed parameters, checked by the server\n"
            "# before the job is made, and passed as arguments, never through a shell.\n"
            "i=0\n"
            'while [ "$i" -lt "$2" ]; do\n'
            "  i=$((i + 1))\n"
            '  echo "hello, $1 ($i/$2)"\n'
            "done\n"
        ),
        "parameters": [
            {
                "name": "name",
                "type": "string",
                "default": "world",
                "regex": "[A-Za-z][A-Za-z .'-]{0,39}",
                "help": "Who to greet: letters, spaces, dots, apostrophes, hyphens.",
            },
            {
                "name": "count",
                "type": "int",
                "min": 1,
                "max": 10,
                "default": 1,
                "help": "How many times.",
            },
        ],
    },
    {
        "name": "checksum",
        "interpreter": "bash",
        "description": "Example: the checksum of a file on the worker (bash; a path and a choice).",
        "content": (
            "set -euo pipefail\n"
            "# $1 is the file, $2 the algorithm: one of the declared choices, so it can\n"
            "# name the program safely.\n"
            "path=$1 algorithm=$2\n"
            '"${algorithm}sum" -- "$path"\n'
        ),
        "parameters": [
            {
                "name": "path",
                "type": "string",
                "required": True,
                "regex": "/.*",
                "help": "An absolute path on the worker, e.g. /etc/hostname.",
            },
            {
                "name": "algorithm",
                "type": "choice",
                "values": ["md5", "sha1", "sha256", "sha512"],
                "default": "sha256",
                "help": "Which checksum.",
            },
        ],
    },
    {
        "name": "random-stats",
        "interpreter": "python3",
        "description": "Example: statistics of random numbers (python3; an int, a float "
        "and a bool).",
        "content": (
            "import random\n"
            "import statistics\n"
            "import sys\n"
            "\n"
            "# Parameters arrive as argv in declared order; a bool is 'true' or 'false'.\n"
            'count, scale, show = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "true"\n'
            "values = [random.Random(42 + i).random() * scale for i in range(count)]\n"
            'print(f"{count} numbers in [0, {scale}): mean {statistics.fmean(values):.4f}, "\n'
            '      f"stdev {statistics.pstdev(values):.4f}")\n'
            "if show:\n"
            "    for v in values[:10]:\n"
            '        print(f"  {v:.4f}")\n'
        ),
        "parameters": [
            {"name": "count", "type": "int", "min": 1, "max": 100000, "default": 1000},
            {
                "name": "scale",
                "type": "float",
                "min": 0.001,
                "max": 1000000,
                "default": 1.0,
                "help": "Numbers are drawn from [0, scale).",
            },
            {"name": "show", "type": "bool", "help": "Also print the first ten numbers."},
        ],
    },
    {
        "name": "times-table",
        "interpreter": "",
        "description": "Example: a multiplication table (awk, by its #! line; an int).",
        "content": (
            "#!/usr/bin/awk -f\n"
            "# Only a BEGIN block, so awk reads no input; ARGV[1] is the size.\n"
            "BEGIN {\n"
            "  n = ARGV[1] + 0\n"
            "  for (i = 1; i <= n; i++) {\n"
            '    line = ""\n'
            '    for (j = 1; j <= n; j++) line = line sprintf("%5d", i * j)\n'
            "    print line\n"
            "  }\n"
            "}\n"
        ),
        "parameters": [
            {"name": "size", "type": "int", "min": 1, "max": 20, "default": 9},
        ],
    },
)


def add(conn: sa.Connection) -> list[scripts.Script]:
    """Store the examples (their declarations checked as any script's)."""
    return [
        scripts.create(
            conn,
            e["name"],
            e["interpreter"],
            e["content"],
            e["description"],
            parameters=e["parameters"],
        )
        for e in EXAMPLES
    ]
