"""The exercises: what each graded function must do, and how an answer is judged.

Each lesson with an exercise notebook has a module here that defines its
:class:`~attn_course.exercises.core.Exercise` objects (cases drawn from seeds,
the reference from the package, invariants, classic mistakes and hints). The
registry below maps an exercise's name (the first argument of
``check("softmax", softmax)`` in the notebooks) to its definition.

Adding a lesson's exercises: write ``solutions/NN_topic.ipynb`` (see
``attn_course.assign``), add a module here with ``EXERCISES = (...)``, and
list it in ``LESSON_MODULES``.
"""

from __future__ import annotations

from importlib import import_module

from .core import Case, Exercise, Invariant, Mistake, Opaque, Raised, Verdict, describe, judge

__all__ = [
    "EXERCISES",
    "Case",
    "Exercise",
    "Invariant",
    "Mistake",
    "Opaque",
    "Raised",
    "Verdict",
    "describe",
    "get_exercise",
    "judge",
]

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
    "translation",
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
