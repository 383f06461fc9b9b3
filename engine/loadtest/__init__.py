"""`hotloop loadtest`: load-test any completions deployment (embedded, vLLM/SGLang, Fireworks).

Modules (import what you need; this package import stays light for the CLI's --help):
- ``schedules`` (pure): load shapes ``ClosedLoop``, ``OpenLoop``, ``AdaptiveLoad`` and the intended
  send times of open-loop runs (``intended_offsets``: constant, Poisson, gamma with burstiness).
- ``runner``: ``CellRunner`` (open-loop dispatch that never waits for a slot; closed loop through
  engine.sampling's Fixed/AdaptiveConcurrencyController), ``AbortPolicy``, ``new_session``.
- ``client``: ``Target``, ``stream_one`` (one timed streamed completion); ``scan``: ``StreamScanner``.
- ``metrics`` (pure): ``RequestRecord``, ``GoodputTargets``, ``percentile``, ``distribution``,
  ``summarize_cell``; ``search`` (pure): ``SearchSpace``, ``SearchState``, ``next_probe``.
- ``output``: ``RunOutput`` (requests.jsonl, summary.json, report.html); ``report``: the
  self-contained HTML report (charts from engine.plots); ``prompts``: JSONL and synthetic prompts.
  (A minimal streaming server with a known delay and capacity, for tests and benchmarks, is
  tests/support/mock_server.py.)
"""
