"""`python -m bert_jax.sweep ...`: see bert_jax/sweep/__init__.py."""

import sys

from bert_jax.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
