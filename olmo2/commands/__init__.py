"""CLI verbs, grouped by lifecycle stage. Each module exposes `register(subparsers)`,
which adds its verbs with `set_defaults(func=run_fn)`; `olmo2/cli.py` wires them up."""
