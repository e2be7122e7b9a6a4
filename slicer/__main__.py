try:
    from .cli.app import entry
except KeyboardInterrupt:  # Ctrl-C while the command line's modules load: one line, as later on
    import sys

    sys.stderr.write("slicer: interrupted; nothing was written\n")
    raise SystemExit(130) from None

entry()
