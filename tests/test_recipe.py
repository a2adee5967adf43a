"""Recipe validation: unknown keys and bad values are one-line errors naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgedistill.toolchain.recipe import RecipeError, builtin_names, load_recipe, parse_recipe
from tests.conftest import tiny_recipe


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "my.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_builtin_default_loads() -> None:
    assert "vit-to-mobilenet" in builtin_names()
    r = load_recipe("vit-to-mobilenet")
    assert r.teacher.name.startswith("vit_") and r.student.name.startswith("mobilenetv3")
    assert r.export.onnx.variants == ["fp32", "int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda r: r["distill"].update(response={"temperature": -1}),
     "my.yaml: distill.response.temperature: Input should be greater than 0, got -1"),
    (lambda r: r["distill"].update(temprature=4), "my.yaml: distill.temprature: unknown key"),
    (lambda r: r.pop("student"), "my.yaml: student: Field required"),
    (lambda r: r["data"].update(kind="imagefolder"), "my.yaml: data.root: required when kind is 'imagefolder'"),
    (lambda r: r["teacher"]["kwargs"].update(num_classes=3), "my.yaml: teacher.kwargs.num_classes: leave it out"),
    (lambda r: r["export"]["onnx"].update(variants=["int4"]), "my.yaml: export.onnx.variants.0: Input should be"),
])
def test_bad_values_name_file_and_field(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    r = tiny_recipe()
    mutate(r)
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, r))
    msg = str(err.value).replace(f"{tmp_path}/", "")
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"my.yaml: line 2: invalid YAML"):
        load_recipe(_write(tmp_path, "name: x\n  bad: [\n"))
    with pytest.raises(RecipeError, match="nope.yaml: no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not a recipe file or built-in recipe"):
        load_recipe("no-such-builtin")
    with pytest.raises(RecipeError, match=r"\(top level\): expected a mapping"):
        parse_recipe([1, 2], "list.yaml")


def test_relative_paths_resolve_against_the_recipe(tmp_path: Path) -> None:
    r = tiny_recipe(data={"kind": "imagefolder", "root": "imgs"})
    assert load_recipe(_write(tmp_path, r)).data.root == (tmp_path / "imgs").resolve()
