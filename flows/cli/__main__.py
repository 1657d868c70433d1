"""``python -m flows.cli``: the ``slm`` command."""

from flows.cli import main

main()
