"""The run: one experiment driven on the lifecycle machine (engine.lifecycle) through the backends seam
(engine.backends).

    orchestrator   engine.run/start/resume: run directory, backends, Runner, summary
    context        RunContext, what every state gets
    records        the typed facts the journal commits
    replay         the pure reading of a journal into what a resumed run restores
    rundir         the run directory's files
    planes         config -> the trainer and deployment backends
    offload        user code (rewards, tokenization) off the event loop
    display        the live table of `hotloop run`
    sinks          metrics rows to TensorBoard, W&B or any MetricSink, off the loop (sinks_builtin)
    run_metrics    Prometheus metrics of the runs a service embeds
    commands       the `hotloop run` and `hotloop resume` commands
"""
