"""Services: one module per area, each a thin layer over the unit of work and the ports."""
