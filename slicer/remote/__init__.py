"""Remote teachers: ``hf://`` (Hugging Face Hub), ``s3://`` and any fsspec URL, ``http(s)://``.

Only the bytes the student keeps cross the network. The plan is made from headers
fetched with range requests; the engine then reads through a :class:`RemoteReader`
that knows every span it will ask for, fetches their kept rows ahead of it with a few
coalesced requests in flight, and hands it span buffers like the local reader's maps.

Imported only for a URL: a local run loads none of this, nor the libraries behind it
(huggingface_hub, fsspec and s3fs; h11 for http(s)). Install them with
``pip install 'weight-slicer[remote]'``.

Modules, one job each: ``source`` (what a protocol offers), ``hub_source``,
``fsspec_source`` and ``http_source`` (the protocols; ``http11``, the HTTP/1.1 client under
``http_source``, on h11), ``checkpoint`` (layouts),
``folder`` (a remote teacher as the rest of slicer sees it), ``ranges`` (which bytes,
pure), ``fetch`` (retries, counting), ``reader`` (prefetching for the engine),
``cache`` (--cache-dir), ``options``, ``adaptive`` (the measured coalescing rule).
"""
from .checkpoint import open_checkpoint, recorded_revision
from .options import RemoteOptions

__all__ = ["RemoteOptions", "open_checkpoint", "recorded_revision"]
