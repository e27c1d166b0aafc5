"""``python -m sim.cli``: the ``servesim`` command."""

import sys

from sim.cli.main import main

sys.exit(main())
