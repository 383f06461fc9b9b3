"""The embedded deployment: a streaming completions server with continuous batching and hot-load.

Layout: ``protocol`` (request validation), ``edge`` (error bodies, auth, header and body refusals),
``app`` (routes, SSE, ``DeploymentServer``), ``scheduler`` (continuous batching on one worker
thread), ``fairness`` (who is admitted next: round-robin across client connections),
``batch_runner`` (batched KV-cache prefill/decode and ``sequence_logprobs``, the reference
full-forward scorer), ``state`` (records passed between them), ``token_selection``, ``detok``,
``hotload``, ``metrics``, ``responses``, ``cli``. Import the submodules directly; this package stays
light so ``hotloop --help`` does not import torch.
"""
