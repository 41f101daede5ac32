"""Build: compile generated source through the on-disk cache."""
from pfjax.build.cache import build, cache_key, stats
from pfjax.build.toolchain import Toolchain, ToolchainMissing, find_toolchain, pfjax_include_dir
