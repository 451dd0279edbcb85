"""Multi-phase liver CT phantom: the built-in dataset for demos, tests and benchmarks."""
from .dataset import (PhantomCase, PhantomConfig, PhantomFolderError, case_name, generate_case, write_case,
                      write_phantom_dataset)
from .tissues import PHASES, REFERENCE_PHASE

__all__ = ["PHASES", "REFERENCE_PHASE", "PhantomCase", "PhantomConfig", "PhantomFolderError", "case_name",
           "generate_case", "write_case", "write_phantom_dataset"]
