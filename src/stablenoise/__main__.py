"""``python -m stablenoise``: the CLI, also as a module for launchers (``accelerate launch -m stablenoise bench``)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="stablenoise")
