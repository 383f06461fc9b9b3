"""`hotloop loadtest`: load-test a completions deployment (embedded, vLLM/SGLang, Fireworks).

Examples:
  hotloop loadtest --url $URL --model tiny --concurrency 8 --requests 200
  hotloop loadtest --url http://vllm:8000 --endpoint /v1/completions --model M --rate 20 --arrival gamma
      --burstiness 0.5 --duration 60 --goodput ttft:500 tpot:50
  hotloop loadtest --url https://api.fireworks.ai --model accounts/A/deployments/D
      --api-key-env FIREWORKS_API_KEY --search rate --search-range 1:64 --goodput e2e:2000
      --compare-sweep 1:64:x2 --duration 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.loadtest.metrics import GoodputTargets
from engine.loadtest.schedules import ARRIVALS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n".join(__doc__.splitlines()[2:])
    t = parser.add_argument_group("target")
    t.add_argument("--url", required=True, help="server base URL (or a full .../completions URL)")
    t.add_argument("--model", required=True, help="model name sent in each request")
    t.add_argument(
        "--endpoint",
        default=None,
        help="completions path (default /inference/v1/completions; use /v1/completions for vLLM/SGLang)",
    )
    t.add_argument(
        "--dialect",
        choices=["fireworks", "vllm"],
        default=None,
        help="how the stream carries token ids and server timings (default: vllm for an endpoint ending"
        " in /v1/completions other than /inference/v1/completions, else fireworks)",
    )
    t.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key (Bearer)")
    t.add_argument("--header", action="append", default=[], metavar="'K: V'", help="extra request header")
    t.add_argument(
        "--extra-body",
        default=None,
        metavar="JSON",
        help="extra JSON fields for every request (null removes a default field)",
    )
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--ignore-eos", action="store_true", help="ask the server to generate max_tokens exactly")
    t.add_argument("--request-timeout", type=float, default=600.0, metavar="S")
    p = parser.add_argument_group("prompts")
    p.add_argument("--prompts", type=Path, help="JSONL file (prompt | prompt_token_ids | messages)")
    p.add_argument(
        "--tokenizer",
        default="tiny",
        help="local tokenizer directory or embedded model name; must match the served model for text prompts",
    )
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=32, help="max_tokens (default for JSONL lines too)")
    p.add_argument("--input-spread", type=float, default=0.0, help="uniform +- fraction of --input-tokens")
    p.add_argument("--output-spread", type=float, default=0.0, help="uniform +- fraction of --output-tokens")
    p.add_argument("--num-prompts", type=int, default=256, help="synthetic prompt pool size (cycled)")
    p.add_argument("--seed", type=int, default=0)
    load = parser.add_argument_group("load (choose one)")
    mx = load.add_mutually_exclusive_group(required=True)
    mx.add_argument("--concurrency", type=int, help="closed loop: fixed requests in flight")
    mx.add_argument("--rate", type=float, help="open loop: requests per second")
    mx.add_argument(
        "--adaptive", action="store_true", help="closed loop steered by AdaptiveConcurrencyController"
    )
    mx.add_argument("--sweep-concurrency", metavar="LIST", help="e.g. 1,2,4,8 or 1:64:x2")
    mx.add_argument("--sweep-rate", metavar="LIST", help="e.g. 1,2,4 or 2:20:+2")
    mx.add_argument(
        "--search", choices=["rate", "concurrency"], help="find the highest load meeting --goodput"
    )
    load.add_argument("--arrival", choices=ARRIVALS, default="poisson")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (<1 burstier)")
    load.add_argument("--initial-window", type=int, default=8)
    load.add_argument("--min-window", type=int, default=1)
    load.add_argument("--max-window", type=int, default=256)
    load.add_argument("--prefill-queue-target", type=float, default=0.5, metavar="S")
    load.add_argument("--adjustment-interval", type=int, default=32)
    load.add_argument("--search-range", default=None, metavar="LO:HI")
    load.add_argument("--search-tolerance", type=float, default=0.1)
    load.add_argument("--search-probes", type=int, default=8)
    load.add_argument("--compare-sweep", metavar="LIST", help="with --search: also sweep these loads")
    load.add_argument("--min-good-fraction", type=float, default=0.95)
    s = parser.add_argument_group("length, targets, output")
    s.add_argument("--duration", type=float, metavar="S", help="seconds per cell")
    s.add_argument("--requests", type=int, metavar="N", help="requests per cell")
    s.add_argument("--warmup", type=int, default=0, metavar="N", help="unmeasured requests first")
    s.add_argument("--goodput", nargs="+", default=[], metavar="KEY:MS", help="ttft:MS tpot:MS e2e:MS")
    s.add_argument("--drain-timeout", type=float, default=60.0, metavar="S")
    s.add_argument(
        "--abort-after",
        type=int,
        default=5,
        metavar="N",
        help="stop after N fatal failures with no success (bad URL/model/key)",
    )
    s.add_argument("--output-dir", type=Path, default=None)
    s.add_argument("--no-progress", action="store_true")


def parse_goodput(items: list[str]) -> GoodputTargets:
    values: dict[str, float] = {}
    for item in items:
        key, sep, ms = item.partition(":")
        key = {"e2el": "e2e"}.get(key.strip().lower(), key.strip().lower())
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise ConfigError(f"--goodput: expected ttft:MS, tpot:MS or e2e:MS, got {item!r}")
        try:
            values[key + "_ms"] = float(ms)
        except ValueError:
            raise ConfigError(f"--goodput: {item!r} has no number of milliseconds") from None
        if values[key + "_ms"] <= 0:
            raise ConfigError(f"--goodput: {item!r} must be positive")
    return GoodputTargets(**values)


def parse_headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"--header: expected 'Name: value', got {item!r}")
        headers[key.strip()] = value.strip()
    return headers


def build_target(args: argparse.Namespace, environ: dict[str, str]) -> Any:
    from engine.loadtest.client import Target, completions_url

    headers = parse_headers(args.header)
    secret = None
    if args.api_key_env:
        secret = environ.get(args.api_key_env)
        if not secret:
            raise ConfigError(f"--api-key-env: environment variable {args.api_key_env} is not set or empty")
        headers["Authorization"] = f"Bearer {secret}"
    extra: dict[str, Any] = {}
    if args.extra_body:
        try:
            extra = json.loads(args.extra_body)
        except ValueError as exc:
            raise ConfigError(f"--extra-body: not valid JSON ({exc})") from None
        if not isinstance(extra, dict):
            raise ConfigError("--extra-body: must be a JSON object")
    if not args.url.startswith(("http://", "https://")):
        raise ConfigError(f"--url: expected http:// or https://, got {args.url!r}")
    url = completions_url(args.url, args.endpoint)
    accumulator, body = _dialect(dialect_of(url, args.dialect))
    return Target(
        url=url,
        model=args.model,
        headers=headers,
        extra_body=extra,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        request_timeout_s=args.request_timeout,
        secret=secret,
        accumulator=accumulator,
        dialect_body=body,
    )


def dialect_of(url: str, requested: str | None) -> str:
    """The stream dialect: as requested, else vLLM's for a plain OpenAI path (``.../v1/completions``),
    else Fireworks' (also the embedded deployment's, at ``/inference/v1/completions``)."""
    if requested is not None:
        return requested
    path = url.split("?", 1)[0].rstrip("/")
    return (
        "vllm"
        if path.endswith("/v1/completions") and not path.endswith("/inference/v1/completions")
        else "fireworks"
    )


def _dialect(name: str) -> tuple[Any, dict[str, Any]]:
    """(accumulator class, fields added to every body) of a dialect."""
    if name == "vllm":
        # vLLM reports queue_time_ms in the final usage chunk (--enable-per-request-metrics); the
        # Fireworks field would only make it log a warning per request.
        from engine.backends.vllm.dialect import VllmAccumulator

        return VllmAccumulator, {}
    from engine.backends.fireworks.dialect import FireworksAccumulator
    from engine.loadtest.client import FIREWORKS_BODY

    return FireworksAccumulator, dict(FIREWORKS_BODY)


def run_info(args: argparse.Namespace, target: Any | None, mode: str) -> dict[str, Any]:
    return {
        "mode": mode,
        "target": {
            "url": target.url if target is not None else args.url,
            "dialect": dialect_of(target.url if target is not None else args.url, args.dialect),
            "model": args.model,
            "api_key_env": args.api_key_env,  # the variable's name only, never its value
        },
        "prompts": {
            "source": str(args.prompts) if args.prompts else "synthetic",
            "tokenizer": args.tokenizer,
            "input_tokens": None if args.prompts else args.input_tokens,
            "output_tokens": args.output_tokens,
            "input_spread": args.input_spread,
            "output_spread": args.output_spread,
        },
        "stop": {"duration_s": args.duration, "requests": args.requests, "warmup": args.warmup},
    }


def mode_of(args: argparse.Namespace) -> str:
    for name in ("concurrency", "rate", "adaptive", "sweep_concurrency", "sweep_rate", "search"):
        if getattr(args, name):
            return name.replace("_", "-")
    return "unknown"


def main(args: argparse.Namespace) -> int:
    import os

    from engine.loadtest.output import RunOutput
    from engine.log import get_logger

    log = get_logger("loadtest")
    mode = mode_of(args)
    out_dir = args.output_dir or Path(f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}")
    target = None
    output: RunOutput | None = None
    try:
        targets = parse_goodput(args.goodput)
        try:
            output = RunOutput(out_dir, targets)
        except OSError as exc:
            raise ConfigError(f"--output-dir: cannot write to {out_dir}: {exc.strerror or exc}") from None
        target = build_target(args, dict(os.environ))
        from engine.loadtest.plan import build_plan, load_prompts

        plan = build_plan(args, targets)
        prompts = load_prompts(args)  # tokenization happens here, before the event loop starts
    except ConfigError as exc:
        print(f"hotloop loadtest: error: {exc}", file=sys.stderr)
        if output is not None:
            output.finish(run_info=run_info(args, target, mode), status="error", error=str(exc))
            print(f"hotloop loadtest: wrote {out_dir}/summary.json", file=sys.stderr)
        return 2
    from engine.loadtest.plan import execute

    status: str = "error"
    error: str | None = "interrupted"
    search: dict[str, Any] | None = None
    try:
        status, error, search = execute(plan, args, target, prompts, output)
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
    finally:
        summary = output.finish(
            run_info=run_info(args, target, mode), status=status, error=error, search=search
        )
        log.info("loadtest.written", dir=str(out_dir), status=status, requests=summary["totals"]["requests"])
    if error:
        print(f"hotloop loadtest: {status}: {error}", file=sys.stderr)
    _print_summary(summary, out_dir)
    return 0 if status == "ok" else 1


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hotloop loadtest · {summary['mode']} · {summary['status']}")
    for col in (
        "cell",
        "ok/total",
        "req/s",
        "goodput/s",
        "TTFT p50/p99",
        "TPOT p50",
        "E2E p50/p99",
        "queue p50",
        "lag p99",
    ):
        table.add_column(col)

    def f(v: Any, d: int = 1) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    for c in summary["cells"]:
        lag = (c.get("dispatch_lag_ms") or {}).get("p99")
        table.add_row(
            c["label"],
            f"{c['completed']}/{c['requests']}",
            f(c["request_throughput"], 2),
            f(c["goodput"]["requests_per_s"], 2),
            f"{f(c['ttft_ms']['p50'])}/{f(c['ttft_ms']['p99'])}",
            f(c["tpot_ms"]["p50"], 2),
            f"{f(c['e2e_ms']['p50'])}/{f(c['e2e_ms']['p99'])}",
            f((c.get("server") or {}).get("prefill_queue_ms", {}).get("p50"), 2),  # the server's own
            f(lag, 2),
        )
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    console.print(table)
    if summary.get("search"):
        s = summary["search"]
        console.print(
            f"search answer ({s['kind']}): {s.get('answer')}  sweep answer: {s.get('sweep_answer')}"
        )
    loops = {c["loop"] for c in summary["cells"]}
    if "closed" in loops:
        console.print("closed loop: latency measured from each request's send (a slot frees, then it starts)")
    if "open" in loops:
        console.print("open loop: latency measured from each request's intended start; lag = send - intended")
    console.print(f"results: {out_dir}/summary.json, requests.jsonl, report.html")
