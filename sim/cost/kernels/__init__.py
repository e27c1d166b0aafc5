"""The ``kernels`` cost model: prices from AIConfigurator's measured kernel databases (``database``: finding and
reading the tables; ``lookups``: one op shape's price from a table; ``model``: the cost model). Needs the
``kernels`` extra (aiconfigurator-core, pyarrow); importing this package needs neither."""
