"""The transformers route: the student from a Hugging Face config, and the bindings of every
tensor dimension learned from transformers' own modules.

``route`` builds the student's spec from a config (``--set``, ``--student-config``);
``layer_lists`` keeps per-layer lists of a config in step with the layers kept;
``bindings`` binds each dimension to the model's axes; ``common`` holds what they share.
transformers is imported only when one of them runs.
"""
