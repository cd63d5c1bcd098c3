"""The exercise specs: what each graded function must do, and the registry that finds them by name.

Each lesson with an exercise notebook has a module here that defines its
:class:`~attn_course.grading.judge.Exercise` objects (cases drawn from seeds,
the reference from the package, invariants, classic mistakes and hints);
``inputs`` holds the random inputs they share. The registry below maps an
exercise's name (the first argument of ``check("softmax", softmax)`` in the
notebooks) to its definition.

Adding a lesson's exercises: write ``solutions/NN_topic.ipynb`` (see
``attn_course.grading.assign``), add a module here with ``EXERCISES = (...)``,
and list it in ``LESSON_MODULES``.
"""

from __future__ import annotations

from importlib import import_module

from ..judge import Exercise

__all__ = ["EXERCISES", "LESSON_MODULES", "get_exercise"]

# One module per lesson that has an exercise notebook, in lesson order.
LESSON_MODULES = (
    "similarity",
    "softmax",
    "attention",
    "additive",
    "self_attention",
    "masking",
    "multihead",
    "positions",
    "block",
    "cost",
    "sparse_patterns",
    "block_sparse",
    "tiling",
    "linear",
    "gpu_kernels",
    "translation",
    "summarization",
    "backward",
    "inference",
)


def _collect() -> dict[str, Exercise]:
    registry: dict[str, Exercise] = {}
    for module_name in LESSON_MODULES:
        module = import_module(f"{__name__}.{module_name}")
        for exercise in module.EXERCISES:
            if exercise.name in registry:
                raise ValueError(f"two exercises are named {exercise.name!r} (in {module.__name__})")
            registry[exercise.name] = exercise
    return registry


EXERCISES: dict[str, Exercise] = _collect()


def get_exercise(name: str) -> Exercise:
    """The exercise called ``name``; a ``KeyError`` lists the known names otherwise."""
    try:
        return EXERCISES[name]
    except KeyError:
        raise KeyError(f"no exercise named {name!r}; known exercises: {', '.join(EXERCISES)}") from None
