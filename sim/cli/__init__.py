"""The ``servesim`` command: ``main`` assembles one module per subcommand family; ``args`` holds the shared
flag groups. Importing this package imports nothing else, so the command starts without torch."""
