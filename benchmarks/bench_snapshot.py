"""Sampler snapshot deltas: size vs base after one AdamW step, and encode / apply time.

    .venv/bin/python benchmarks/bench_snapshot.py [--model small] [--lr 1e-5]

One full-parameter AdamW step (cross_entropy on a random 32 x 128 batch) on the model, then the
new weights are written as a delta against the old ones in both encodings ("xor", "sub-xor") and
applied back (bit-exact, verified by the manifest hash). Prints delta/base size ratios (target
<= 0.3) and timings side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    from engine.local.models import load_model
    from engine.weights.snapshot import load_snapshot, write_base, write_delta

    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ids = torch.randint(4, 1024, (a.batch, a.length + 1), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    (-torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).sum()).backward()
    opt.step()
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    changed = sum(int((after[k] != before[k]).sum()) for k in after) / sum(v.numel() for v in after.values())

    with tempfile.TemporaryDirectory() as tmp:
        bucket = Path(tmp)
        t0 = time.perf_counter()
        base = write_base(bucket, "base", before, a.model)
        base_s = time.perf_counter() - t0
        print(f"model={a.model} lr={a.lr} params changed={changed:.1%}")
        print(f"base         : {base.payload_size / 1e6:8.2f} MB  write {base_s:.3f}s")
        for encoding in ("xor", "sub-xor"):
            name = f"delta-{encoding}"
            t0 = time.perf_counter()
            delta = write_delta(bucket, name, after, "base", before, a.model, encoding=encoding)  # type: ignore[arg-type]
            encode_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, got = load_snapshot(bucket, name, ("base", before))
            apply_s = time.perf_counter() - t0
            exact = all(torch.equal(got[k].view(torch.int32), after[k].view(torch.int32)) for k in after)
            ratio = delta.payload_size / base.payload_size
            print(
                f"{encoding:<13}: {delta.payload_size / 1e6:8.2f} MB  ratio {ratio:.3f}"
                f" (target <= 0.3)  encode {encode_s:.3f}s  apply {apply_s:.3f}s  bit-exact={exact}"
            )


if __name__ == "__main__":
    main()
