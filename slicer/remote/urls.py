"""A teacher URL checked as text, before any library is imported or any request made. Pure.

A malformed URL is not a network problem: without this check ``hf://../../etc`` reached
huggingface_hub's validator (a traceback), ``https://[::1/x/`` urllib3's parser, and
``https://`` six retries of a request that could never be made.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ..errors import SlicerError

# What slicer reads: the Hub, plain HTTP(S) servers, and object stores through fsspec
# (s3fs ships with the [remote] extra; gcsfs and adlfs are the user's to install).
FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file")
SCHEMES = ("hf", "http", "https", *FSSPEC_SCHEMES)
# huggingface_hub's rules for a repository id (validate_repo_id), per part of ORG/NAME.
_HF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")


def check_url(url: str) -> None:
    """Raise SlicerError (one line) for a URL slicer cannot read; return for one it may."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise SlicerError(f"{url}: unsupported URL scheme {scheme}://; a teacher can be at hf://ORG/NAME, "
                          f"http(s)://HOST/FOLDER/ or an object store ({', '.join(s + '://' for s in FSSPEC_SCHEMES)})")
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise SlicerError(f"{url!r}: control characters in a URL")
    if scheme == "hf":
        _check_hf(url, rest)
    elif scheme in ("http", "https"):
        _check_http(url)
    elif scheme != "file" and not rest.split("/", 1)[0]:
        raise SlicerError(f"{url}: no bucket or container; expected {scheme}://BUCKET/PREFIX/")


def is_literal_address(host: str | None) -> bool:
    """``127.0.0.1`` or ``::1`` rather than a name: a refused connection there is final (no DNS
    answer can change between tries), so it is not retried."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _check_hf(url: str, rest: str) -> None:
    repo = rest.strip("/")
    if repo.startswith("models/"):
        repo = repo[len("models/"):]
    if repo.startswith(("datasets/", "spaces/")):
        return  # parse_hf_url says why these cannot be teachers
    parts = repo.split("/")
    org, name = parts[0], (parts[1].split("@", 1)[0] if len(parts) > 1 else "")
    if "@" in org or not name:
        raise SlicerError(f"{url}: expected hf://ORG/NAME[@REVISION][/FOLDER]")
    for part in (org, name):
        if (not _HF_PART.fullmatch(part) or ".." in part or "--" in part or part.endswith((".", "-"))
                or part.endswith(".git")):
            raise SlicerError(f"{url}: {part!r} is not a valid Hugging Face repository name (letters, digits, '-', "
                              "'_', '.'; no '..' or '--'); expected hf://ORG/NAME[@REVISION][/FOLDER]")
    if any(p in ("..", ".") for p in parts[2:]):
        raise SlicerError(f"{url}: '..' or '.' in the path inside the repository")


def _check_http(url: str) -> None:
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises for a port out of range or not a number
    except ValueError as e:
        raise SlicerError(f"{url}: not a valid URL ({e})") from None
    if not host:
        raise SlicerError(f"{url}: no host; expected {parts.scheme}://HOST[:PORT]/FOLDER/")
