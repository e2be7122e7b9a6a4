"""A rotated hidden axis (``--hidden rotate``): keep the top principal components of the
residual stream instead of a subset of its channels.

Pre-norm decoders with RMSNorm (Llama, Mistral, Qwen2/3, Phi-3) compute every residual
stream update from ``norm(x) = g * x / rms(x)``, and ``rms`` is invariant under an orthogonal
change of basis ``x -> Q^T x``. So with the norm gains ``g`` folded into the linears that read
them, multiplying every hidden-bound dimension by an orthogonal ``Q`` gives the same model
(the teacher's logits, exactly); keeping the first k columns of ``Q`` (the directions of most
variance of the residual stream on calibration data) gives a student of hidden size k.

- ``family`` (pure): which models are offered, and the role of each tensor (reader of
  which norm site, writer, embedding, head);
- ``transform`` (pure): one tensor's transform, and ``Q`` from the covariance;
- ``statistics``: the covariance of the residual stream at every norm input, and the
  per-site gains, from the streamed calibration forward ``slicer score`` runs;
- ``teacher``: write the rotated teacher (one tensor in memory at a time);
- ``shrink``: the whole run: statistics, rotation, rotated teacher, selection of the
  other axes by importance, manifest.
"""
