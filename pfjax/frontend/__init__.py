"""Frontend: jaxpr in, fusion groups and their GIR out."""
from pfjax.frontend.lower import LoweringError, lower_group
from pfjax.frontend.partition import Group, Partition, bytes_moved, partition
from pfjax.frontend.program import Program, evaluate, flatten, trace
