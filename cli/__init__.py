"""Command-line front end (installed as dfkd_meta.cli)."""


def run() -> None:
    """The console entry point: Ctrl-C at any moment, start-up imports included, exits with status 130
    and one line, never a traceback (inside a command, ``Group`` does the same after cleaning up)."""
    import signal
    import sys

    signal.signal(signal.SIGINT, _interrupt)
    try:
        from .main import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


def _interrupt(signum, frame) -> None:
    """Ctrl-C: a KeyboardInterrupt, except inside an import, where it could cross an extension module's
    C++ initialisation (torch, onnx) and abort the process (SIGABRT); nothing is written yet then, so
    leave at once."""
    import os
    import sys

    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        frame = frame.f_back
    raise KeyboardInterrupt
