from __future__ import annotations

import ast
import pathlib

import features

FORBIDDEN = {"kafka", "redis", "boto3", "botocore", "ray", "actors", "regions", "cluster"}
PACKAGE = pathlib.Path(features.__file__).parent


def test_every_export_resolves_and_all_matches_the_table() -> None:
    assert sorted(features.__all__) == sorted(features._EXPORTS)
    for name in features.__all__:
        assert getattr(features, name) is not None


def test_features_imports_no_io_library_and_nothing_of_ours() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{path.name} imports {roots & FORBIDDEN}"
