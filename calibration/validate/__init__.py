"""Validation: the real engine (measured) against the simulator (predicted) on one trace, batch by batch and
request by request (``run``), the error tables (``errors``), the op-by-op check (``op_check``), the report
(``report``) and the ``servesim validate`` command (``cli``)."""
