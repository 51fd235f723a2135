"""`python -m olmo2 ...` (and `torchrun -m olmo2 train ...`) runs the CLI."""
import sys

from olmo2.cli import main

sys.exit(main())
