"""``python -m infra_pl`` is the same as the ``infra-pl`` command."""

from infra_pl.cli import main

if __name__ == "__main__":
    main()
