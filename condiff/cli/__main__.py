"""python -m condiff.cli (torchrun and accelerate launch a module)."""
import sys

from .main import main

sys.exit(main())
