"""The one exception type users see."""


class SlicerError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the file (and tensor) at fault and, where
    possible, says how to fix it. The CLI prints it as ``slicer: error: <message>``
    and exits with status 2.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the message says what the output folder holds now.

    A KeyboardInterrupt still (code that stops on Ctrl-C keeps doing so); the CLI
    prints it as ``slicer: interrupted; <message>`` and exits with status 130.
    """
