"""Command-line front end (installed as dfkd_meta.cli)."""


def run() -> None:
    """The console entry point: Ctrl-C at any moment, start-up imports included, exits with status 130
    and one line, never a traceback (inside a command, ``Group`` does the same after cleaning up)."""
    import sys

    try:
        from .main import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
