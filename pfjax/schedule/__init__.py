"""Schedule decisions and the cost model that ranks them."""
from pfjax.schedule.cost import Cost, estimate
from pfjax.schedule.decisions import Schedule, apply, choose
