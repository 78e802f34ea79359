"""``python -m cr_edge.cli``: the same as the ``cr-edge`` script."""

from cr_edge.cli.group import main

main()
