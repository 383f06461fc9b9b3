"""The embedded deployment: a streaming completions server with continuous batching and hot-load.

Layout: ``api`` (request validation), ``app`` (routes, SSE, ``DeploymentServer``), ``scheduler``
(continuous batching on one worker thread), ``engine`` (batched KV-cache prefill/decode and
``sequence_logprobs``, the reference full-forward scorer), ``state`` (records passed between
them), ``sampling``, ``detok``, ``hotload``, ``metrics``, ``responses``, ``cli``. Import the
submodules directly; this package stays light so ``hotloop --help`` does not import torch.
"""
