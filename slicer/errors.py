"""The one exception type users see."""


class SlicerError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the file (and tensor) at fault and, where
    possible, says how to fix it. The CLI prints it as ``slicer: error: <message>``
    and exits with status 2.
    """
