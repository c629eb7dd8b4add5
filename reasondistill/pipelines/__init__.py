"""The top layer: orchestrators that train and evaluate (``compare``, the embedded task's
``build_task``). Nothing below the CLI imports them."""
