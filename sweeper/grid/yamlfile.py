"""Safe YAML loading that keeps line numbers and refuses duplicate keys.

PyYAML's SafeLoader builds only plain data (no Python objects). Two things it does not do on its
own: it silently keeps the last of two duplicate keys (a duplicated stage would vanish), and it
reads `1e-3` as a string because YAML 1.1 wants a dot in floats. Both are fixed here.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml

from sweeper.errors import SpecError

_FLOAT = re.compile(
    r"""^[-+]?(?:
        [0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[0-9][0-9_]*[eE][-+]?[0-9]+
        |\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """SafeLoader plus duplicate-key detection and YAML 1.2 style floats."""

    file: str | None = None


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Hashable, Any] = {}
    first_line: dict[Hashable, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            # Keys are names (of stages, params, grid axes); null, true or 1 as a key would also
            # break the canonical JSON that job identities are hashed from.
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a list or mapping"
            raise SpecError(
                f"a mapping key must be a name, not {shown or 'null'}",
                file=loader.file,
                line=key_node.start_mark.line + 1,
                hint=f"quote it if you mean the text: '{shown}':" if isinstance(key_node, yaml.ScalarNode) else None,
            )
        if key in mapping:
            raise SpecError(
                f"duplicate key '{key}' (first defined on line {first_line[key]})",
                file=loader.file,
                line=key_node.start_mark.line + 1,
                key=str(key),
                hint="each key may appear once in a mapping; merge or rename one of them",
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
        first_line[key] = key_node.start_mark.line + 1
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class LineIndex:
    """Maps a key path such as ('stages', 'train', 'grid', 'lr') to its 1-based line number."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(getattr(key_node, "value", ""))
                here = (*path, key)
                self._lines[here] = key_node.start_mark.line + 1
                self._walk(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = (*path, str(i))
                self._lines[here] = item.start_mark.line + 1
                self._walk(item, here)

    def line(self, *path: object) -> int | None:
        """The line of the deepest known prefix of `path`."""
        parts = tuple(str(p) for p in path)
        while parts:
            if parts in self._lines:
                return self._lines[parts]
            parts = parts[:-1]
        return None


# A grid file describes at most a few thousand values. Aliases can make a tiny file expand to
# billions (nine aliases of nine aliases of ...: "billion laughs"), which would hang enqueue in
# every walk over the data; such a file is refused before anything walks it.
MAX_VALUES = 200_000


def _check_size(root: yaml.Node | None, file: str | None) -> None:
    """Refuse a document whose aliases expand past MAX_VALUES values, or refer to themselves."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise SpecError(
                "a YAML alias refers to the value that contains it",
                file=file,
                line=node.start_mark.line + 1,
                hint="anchors (&name) and aliases (*name) may share values, not nest them in themselves",
            )
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(item) for item in node.value)
        else:
            n = 1
        open_nodes.discard(key)
        if n > MAX_VALUES:
            raise SpecError(
                f"the file expands to more than {MAX_VALUES:,} values through YAML aliases",
                file=file,
                line=node.start_mark.line + 1,
                hint="a grid file this large is almost certainly an alias bomb; write the values out",
            )
        sizes[key] = n
        return n

    if root is not None:
        size(root)


def load_yaml(text: str, file: str | None = None) -> tuple[Any, LineIndex]:
    """Parse `text` as plain-data YAML. Raises SpecError with the file and line on any problem."""

    def loader(stream: str) -> _Loader:
        inst = _Loader(stream)
        inst.file = file
        return inst

    try:
        node_loader = loader(text)
        try:
            root = node_loader.get_single_node()
        finally:
            node_loader.dispose()
        _check_size(root, file)
        data_loader = loader(text)
        try:
            data = data_loader.get_single_data()
        finally:
            data_loader.dispose()
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise SpecError(
            f"YAML tag not allowed: {exc.problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="grid files hold plain data only (mappings, lists, strings, numbers); "
            "tags such as !!python/object are refused",
        ) from None
    except RecursionError:
        raise SpecError(
            "the file is nested too deeply to be a grid",
            file=file,
            hint="a grid nests a few levels: stages, a stage, its params",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            f"not valid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="check the indentation and the quoting around this line",
        ) from None
    return data, LineIndex(root)
