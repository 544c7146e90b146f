"""condiff's command line: one module per command group, each parsing arguments and presenting results only.

The work is in the assembly layer (`pipelines/requests.py`) and the modules below it.
"""
from .args import (GUIDANCE_FORM_NAMES, GUIDANCE_METHOD_NAMES, GUIDE_NAMES, SAMPLER_NAMES,  # noqa: F401
                   SCHEDULE_NAMES, THRESHOLD_NAMES, VARIANCE_NAMES)
from .main import build_parser, main  # noqa: F401
