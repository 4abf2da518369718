"""--max-memory on the demo model: `shear-hub prune smollm2` capped at about 1/3 of its fp32 weights vs uncapped.

Prints one table: wall time (and the ratio), peak RSS of each prune process (os.wait4's ru_maxrss) and its peak anonymous memory (RssAnon
sampled every 20 ms), whether the two
runs removed the same groups (report removed_groups + dims_after, and every saved tensor equal), and the largest
logit difference of the two pruned models on a fixed input.

    nice -n 15 python benchmarks/bench_max_memory.py [--method magnitude|wanda|taylor|surgeon] [--no-eval] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str]) -> tuple[float, int, int]:
    """Wall time, peak RSS (ru_maxrss: weights, runtime, and file pages such as the mmapped checkpoint) and peak
    anonymous memory (RssAnon sampled every 20 ms: what the process itself allocated) of one prune process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    anon = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # not poll(): it would reap the child's rusage
        if pid:
            break
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                anon = max(anon, next(int(x.split()[1]) * 1024 for x in fh if x.startswith("RssAnon:")))
        except (OSError, StopIteration):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, anon


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "taylor", "surgeon"])
    ap.add_argument("--no-eval", action="store_true", help="pass --no-eval (no held-out perplexity, whose logits "
                    "dominate the peak RSS of both runs)")
    ap.add_argument("--work", default=None, help="folder for the two outputs (default: a temporary folder)")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from shear_hub.loading import demo_model_dir
    from shear_hub.memory_plan import _fmt, header_plan

    weights = header_plan(demo_model_dir(), "float32").total_bytes
    cap = f"cpu={_fmt(weights // 3)}"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-max-memory-"))
    base = [sys.executable, "-m", "shear_hub", "prune", "smollm2", "--method", args.method, "--no-progress",
            "--overwrite"] + (["--no-eval"] if args.no_eval else [])
    rows = {}
    for name, extra in (("uncapped", []), (f"--max-memory {cap}", ["--max-memory", cap])):
        out = work / ("capped" if extra else "uncapped")
        rows[name] = (*run(base + ["--output", str(out)] + extra), out)
    (t0, _, _, a), (t1, _, _, b) = rows.values()
    ra, rb = (json.loads((p / "pruning_report.json").read_text()) for p in (a, b))
    ta, tb = tensors(a), tensors(b)
    same = (ra["removed_groups"] == rb["removed_groups"] and ra["dims_after"] == rb["dims_after"]
            and ta.keys() == tb.keys() and all(torch.equal(ta[k].float(), tb[k].float()) for k in ta))
    ids = torch.arange(2 * 128).reshape(2, 128) * 7 % 49152
    with torch.no_grad():
        la, lb = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)(input_ids=ids).logits for p in (a, b))
    diff = float((la - lb).abs().max())
    print(f"smollm2 ({weights / 2**20:.0f} MiB fp32 weights), --method {args.method}, sparsity 0.2, "
          f"{torch.get_num_threads()} threads")
    print("| run | wall s | peak RSS MiB | peak anonymous MiB |\n|---|---|---|---|")
    for name, (t, r, anon, _) in rows.items():
        print(f"| {name} | {t:.1f} | {r / 2**20:.0f} | {anon / 2**20:.0f} |")
    print(f"time ratio capped/uncapped {t1 / t0:.2f}; same groups and tensors: {same}; max |logit diff| {diff:.2e}; "
          f"held-out ppl after: {ra['evaluation'].get('heldout_perplexity', {}).get('value')} vs "
          f"{rb['evaluation'].get('heldout_perplexity', {}).get('value')}")


if __name__ == "__main__":
    main()
