"""The examples folder on sys.path (examples import each other by module name, as a user's scripts would)."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

# Tiny settings for the examples: a 32-wide, 2-layer GPT-2, 32 training sequences, 30 steps.
TINY_EXAMPLE_ARGS = ["--n-train", "32", "--steps", "30", "--hidden", "32", "--layers", "2", "--n-prompts", "4"]
