"""GIR -> GIR rewrites."""
from pfjax.passes.pipeline import PIPELINE, run_passes
