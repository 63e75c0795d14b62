"""``python -m dinossl`` is the ``dino`` command (handy under torchrun)."""

from dinossl.cli import main

raise SystemExit(main())
