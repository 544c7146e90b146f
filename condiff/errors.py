"""Errors caused by user input; the CLI prints them on one line and exits non-zero."""
from .config import ConfigError
from .data.imagefolder import DataError
from .io import CheckpointError
from .nets.text import VocabularyError
from .world.grammar import PromptError
from .world.render import LayoutError

USER_ERRORS = (ConfigError, DataError, CheckpointError, VocabularyError, PromptError, LayoutError, FileNotFoundError,
               ValueError)

