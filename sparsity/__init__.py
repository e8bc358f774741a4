"""Contextual sparsity (ShadowLLM / DejaVu): importance, predictors, and the torch masked model.

- ``importance``: per-token importance of every attention head and MLP neuron on the source model.
- ``predictor``: the predictor file format, its torch forward, and load/validate.
- ``training``: trains the single (ShadowLLM) and per-layer (DejaVu) predictors.
- ``masking``: the torch reference semantics that the ONNX graph pass must reproduce.

Heavy dependencies (torch, transformers) are imported by the submodules, not here.
"""
