"""A toy third pipeline kind, ``identity``, in one folder: its recipe, stages and report (tests/test_toy_kind.py).

Its "model" is an identity matrix: export writes it, bench times it on the host and scores it (the share of test
inputs it maps to themselves), report writes the measurement rows. It exists to show what a kind costs: this
folder and one :func:`edgedistill.toolchain.pipeline.register_kind` call.
"""

from typing import Literal

from pydantic import Field

from edgedistill.toolchain.pipeline import PIPELINES, Pipeline
from edgedistill.toolchain.recipe import RecipeBase, Section


class BenchConfig(Section):
    """How the host times the identity: ``runs`` samples (the gate's ``min_samples`` needs 30 or more)."""

    runs: int = Field(40, ge=1)
    devices: list[str] = ["host"]


class IdentityRecipe(RecipeBase):
    """``kind: identity``: the identity's size and how it is timed."""

    kind: Literal["identity"] = "identity"
    size: int = Field(4, ge=1)
    bench: BenchConfig = BenchConfig()


PIPELINES.register("identity")(Pipeline("identity", IdentityRecipe, "tests.toy_kind.stages",
                                        "an identity matrix, exported and timed"))
