"""Zero-shot tasks through lm-evaluation-harness, when it is installed and its datasets can be reached."""

from __future__ import annotations

INSTALL_HINT = "pip install lm-eval"


class ZeroShotUnavailable(Exception):
    """lm-eval is missing or a task's data cannot be fetched; the message is the one line to show."""


def run_zero_shot(model, tokenizer, tasks: list[str], *, limit: int | None = None, batch_size: int = 8,
                  device: str = "cpu") -> dict:
    """{"tasks": {task: {metric: value}}, "limit": ..., "lm_eval_version": ...}; raises ZeroShotUnavailable."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ZeroShotUnavailable(f"zero-shot tasks skipped: lm-evaluation-harness is not installed ({INSTALL_HINT})") from None
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, log_samples=False)
    except Exception as exc:  # dataset download / unknown task: report and go on with the other numbers
        text = " ".join(str(exc).split())[:200]
        raise ZeroShotUnavailable(f"zero-shot tasks skipped: lm-eval could not run {','.join(tasks)} ({text}); "
                                  "check the task names and that its datasets are reachable (HF_DATASETS_OFFLINE, network)") from exc
    out: dict = {}
    for task, metrics in (results or {}).get("results", {}).items():
        out[task] = {k.split(",")[0]: v for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k}
    return {"tasks": out, "limit": limit, "lm_eval_version": getattr(lm_eval, "__version__", None)}
