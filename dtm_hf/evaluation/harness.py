"""lm-evaluation-harness tasks (the `eval` extra) through its Python API."""

from ..errors import DtmError


def run_lm_eval(path: str, tasks: str, limit: int | None, include_path: str | None) -> dict:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise DtmError("--lm_eval_tasks needs lm-evaluation-harness: pip install 'dtm-hf[eval]'") from err
    import torch

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": path}, tasks=tasks.split(","), limit=limit,
        device="cuda" if torch.cuda.is_available() else "cpu",
        task_manager=TaskManager(include_path=include_path), log_samples=False,
    )
    # lm-eval names metrics "acc,none" (metric, filter); keep the scores, not their stderr or sample counts.
    return {task: {key.removesuffix(",none"): value for key, value in metrics.items()
                   if "," in key and "_stderr" not in key and isinstance(value, int | float)}
            for task, metrics in results["results"].items()}
