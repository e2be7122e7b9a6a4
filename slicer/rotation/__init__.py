"""A rotated hidden axis (``--hidden rotate``): keep the top principal components of the
residual stream instead of a subset of its channels.

Pre-norm decoders with RMSNorm (Llama, Mistral, Qwen2/3, Phi-3) compute every residual
stream update from ``norm(x) = g * x / rms(x)``, and ``rms`` is invariant under an orthogonal
change of basis ``x -> Q^T x``. So with the norm gains ``g`` folded into the linears that read
them, multiplying every hidden-bound dimension by an orthogonal ``Q`` gives the same model
(the teacher's logits, exactly); keeping the first k columns of ``Q`` (the directions of most
variance of the residual stream on calibration data) gives a student of hidden size k.

- ``family`` (pure): which models are offered, and why the others are refused;
- ``observe``: the role of each module, seen on one short streamed forward of the teacher
  (which norms are RMSNorms over the residual stream, which modules read each);
- ``roles``: what the engine does to each student tensor (from the plan's bindings and what
  was observed);
- ``transform`` (pure): ``Q`` from the covariance;
- ``statistics``: the covariance of the residual stream at every norm input, and the
  per-site gains, from the streamed calibration forward ``slicer score`` runs;
- ``shrink``: the whole run: roles, statistics, rotation, then the engine (slicer.run.rotate
  multiplies every hidden-bound dimension as it streams), manifest.
"""
