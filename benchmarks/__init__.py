"""Benchmarks: code that measures rlexp and writes each table it prints under ``benchmarks/results/``."""

from __future__ import annotations

from importlib import metadata


def versions(*packages: str) -> str:
    """The environment line of a result file: what its figures depend on, as training runs record
    it (:func:`rlexp.tracking.runtime_tags`): rlexp's commit when run from a checkout, Python,
    ``packages`` (``not installed`` if absent), torch, gymnasium and the CPU instruction set torch's
    kernels use (seeded runs reproduce only on the same one)."""
    from rlexp.tracking import runtime_tags

    tags = runtime_tags()
    parts = []
    if commit := tags.get("mlflow.source.git.commit"):
        parts.append(f"rlexp {commit[:7]}")
    parts.append(f"python {tags['runtime.python']}")
    for name in packages:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    parts += [f"torch {tags['runtime.torch']}", f"gymnasium {tags['runtime.gymnasium']}",
              f"cpu {tags['runtime.cpu']} ({tags['runtime.machine']})"]
    return ", ".join(parts)
