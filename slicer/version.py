"""The version of slicer (apart from the package's __init__, which loads the whole API)."""
__version__ = "0.1.0"
