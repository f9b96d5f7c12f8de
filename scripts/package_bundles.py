"""Package each bundle as a MONAI bundle zip (``dist/<name>_v<version>.zip``) for ``monai.bundle.download``.

The zip holds ``<name>/configs``, ``<name>/docs``, ``<name>/LICENSE``, the model-zoo metadata schema
``<name>/schemas/meta_schema_<date>.json`` (so ``verify_metadata --filepath schemas/...`` needs no network), the
trained weights ``<name>/models/model.pt`` with the training record beside them (``models/model.json``: the
training voxel spacing, when the weights have one), and, when ``configs/inference.json`` refers to semiseg code (a
``semiseg.networks`` network, say), that code under ``<name>/scripts/semiseg/``, with the zip's ``inference.json``
rewritten to ``scripts.semiseg.<module>.<Name>``. So after

    python -c "from monai.bundle import download; \
        download(name='mean_teacher', url='file:///.../mean_teacher_v0.1.0.zip', bundle_dir='bundles')"
    cd bundles/mean_teacher && python -m monai.bundle run --config_file configs/inference.json --dataset_dir DATA

inference runs with nothing but MONAI installed, i.e. ``pip install "monai[fire,ignite,nibabel]==1.6.1"`` plus
torch (``bundle_root`` resolves to ``.`` outside the repo, and ``monai.bundle run`` puts the bundle root on
``sys.path``, which is how model-zoo bundles import their ``scripts``).

Weights: the command line ships ``<weights-from>/<name>/models/model.pt`` (default ``results/demo``, what ``make
demo`` writes), else the bundle's own ``bundles/<name>/models/model.pt`` (a training run from the repository).
Without bundle names it packages every bundle that has weights and lists the ones skipped, failing only when none
has; a bundle named on the command line (``make package PACKAGE_ARGS=mean_teacher``) must have weights.
``--allow-no-weights`` packages bundles without them too; such a zip's inference stops in one line saying that
there are no trained weights (``semiseg.bundle_checks.check_weights``, shipped in the zip).

Which code ships: every ``semiseg.`` reference in ``inference.json`` and in the overlays merged with it to change
its network (``la.json``, ``reference_network.json``; ``_target_`` values and ``$`` expressions) is resolved to the
module that defines the object (``obj.__module__``); that module and, transitively, the semiseg modules it imports
relatively are copied verbatim. A shipped module may import only torch, monai, numpy, the standard library and
(relatively) other semiseg modules; anything else, an absolute ``semiseg`` import included, stops the packaging with
an error naming the module and line. The repository's bundles keep referring to ``semiseg.``; only the zip's copies
of those configs are rewritten.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semiseg.bundle_config import bundle_dirs
from semiseg.inference.spacing import RECORD_FILE

REPO = Path(__file__).resolve().parent.parent
# configs an inference run reads: inference.json and the overlays merged with it (its network: la.json,
# reference_network.json)
INFERENCE_CONFIGS = ("inference.json", "la.json", "reference_network.json")
INCLUDE = ("configs", "docs", "LICENSE")
SCHEMAS = REPO / "schemas"  # the model-zoo metadata schemas, shipped under <name>/schemas/
PACKAGE = "semiseg"
SCRIPTS = "scripts"
ALLOWED_IMPORTS = frozenset({"torch", "monai", "numpy"})
_REFERENCE = re.compile(rf"(?<![\w.]){PACKAGE}(?:\.[A-Za-z_]\w*)+")


def _is_semiseg(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _is_package(name: str) -> bool:
    spec = _spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def _module_file(name: str) -> Path:
    """The source file of the (non-package) module ``name``."""
    spec = _spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ValueError(f"cannot ship {name!r}: no Python source file found for it.")
    if spec.submodule_search_locations is not None:
        raise ValueError(
            f"cannot ship {name!r}: it is a package, whose __init__ is not shipped; refer to the module that defines "
            "the object instead."
        )
    return Path(spec.origin)


def _defining_path(ref: str, obj: Any, container: str, attr: str) -> tuple[str | None, str]:
    """``(semiseg module to ship or None, dotted path)`` of ``obj``, found as ``container.attr``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is obj:
            return (module if _is_semiseg(module) else None), f"{module}.{qualname}"
        raise ValueError(f"{ref!r}: {module}.{qualname} does not lead back to the object, so it cannot be shipped.")
    if not _is_package(container):  # a constant defined in a plain module
        return container, f"{container}.{attr}"
    raise ValueError(
        f"{ref!r}: cannot tell which module defines {attr!r} ({type(obj).__name__}); refer to it through the "
        "module that defines it."
    )


def resolve_reference(ref: str) -> tuple[str | None, str]:
    """Resolve a dotted ``semiseg.`` reference to the module to ship and the zip's rewritten reference.

    Args:
        ref: e.g. ``"semiseg.networks.DeepSupervisionUNet"`` (re-exported) or ``"semiseg.networks.unet_factory"``.

    Returns:
        ``(module, new_ref)``: the semiseg module defining the object (``None`` when it is defined outside semiseg,
        e.g. a re-exported MONAI class) and the reference to write in the zip, e.g.
        ``("semiseg.networks.deep_supervision", "scripts.semiseg.networks.deep_supervision.DeepSupervisionUNet")``.

    Raises:
        ValueError: if ``ref`` does not resolve, names a package, or its defining module cannot be determined.
    """
    parts = ref.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if hasattr(obj, parts[i]):
            obj = getattr(obj, parts[i])
        else:
            try:
                obj = importlib.import_module(f"{prefix}.{parts[i]}")
            except ImportError as err:
                raise ValueError(f"{ref!r} does not resolve: {prefix} has no attribute {parts[i]!r}.") from err
        if inspect.ismodule(obj):
            continue
        module, path = _defining_path(ref, obj, prefix, parts[i])
        if module is not None:
            path = f"{SCRIPTS}.{path}"
        return module, ".".join([path, *parts[i + 1 :]])
    _module_file(obj.__name__)  # refuses packages
    return obj.__name__, f"{SCRIPTS}.{obj.__name__}"


def _relative_name(module: str, imported: str) -> str:
    """How ``module`` would name ``imported`` relatively: ``("semiseg.a.b", "semiseg.c") -> "..c"``."""
    package, target = module.split(".")[:-1], imported.split(".")
    common = 0
    while common < min(len(package), len(target)) and package[common] == target[common]:
        common += 1
    return "." * (len(package) - common + 1) + ".".join(target[common:])


def _check_absolute_import(module: str, path: Path, line: int, imported: str) -> None:
    root = imported.split(".")[0]
    if root == PACKAGE:
        raise ValueError(
            f"{path}:{line}: {module} imports {imported!r} absolutely; a module shipped in a bundle zip must import "
            f"semiseg code relatively ('from {_relative_name(module, imported)} import ...'), because semiseg is "
            "not installed where the bundle runs."
        )
    if root not in ALLOWED_IMPORTS and root not in sys.stdlib_module_names:
        raise ValueError(
            f"{path}:{line}: {module} imports {imported!r}; a module shipped in a bundle zip may import only "
            f"{', '.join(sorted(ALLOWED_IMPORTS))}, the standard library and semiseg modules (relatively)."
        )


def module_dependencies(module: str) -> list[str]:
    """Check the imports of a semiseg module meant for a bundle zip and return its relative semiseg imports.

    Args:
        module: a non-package semiseg module, e.g. ``"semiseg.networks.deep_supervision"``.

    Returns:
        The semiseg modules it imports relatively (``from .x import y``, ``from . import x``), in source order.

    Raises:
        ValueError: if it imports semiseg absolutely, imports anything outside torch, monai, numpy and the standard
            library, or imports a name from a package ``__init__`` (which is not shipped).
    """
    path = _module_file(module)
    package = module.rpartition(".")[0]
    deps: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _check_absolute_import(module, path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            _check_absolute_import(module, path, node.lineno, node.module or "")
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            try:
                base = importlib.util.resolve_name(relative, package)
            except ImportError as err:
                raise ValueError(f"{path}:{node.lineno}: {module}: {relative!r} goes above {PACKAGE}.") from err
            if not _is_package(base):
                _module_file(base)
                deps.append(base)
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name == "*" or _spec(sub) is None or _is_package(sub):
                    raise ValueError(
                        f"{path}:{node.lineno}: {module} imports {alias.name!r} from package {base}, whose __init__ "
                        "is not shipped in a bundle zip; import it from the module that defines it."
                    )
                deps.append(sub)
    return deps


def collect_modules(roots: list[str]) -> dict[str, Path]:
    """``roots`` and their transitive relative semiseg imports, checked, as ``{module: source file}``.

    Raises:
        ValueError: as :func:`module_dependencies`.
    """
    found: dict[str, Path] = {}
    pending = list(roots)
    while pending:
        module = pending.pop(0)
        if module in found:
            continue
        found[module] = _module_file(module)
        pending.extend(module_dependencies(module))
    return dict(sorted(found.items()))


def _rewrite_import(statement: ast.Import | ast.ImportFrom, code: str, resolve: Callable[[str], str]) -> str | None:
    """The zip's version of a ``$import``/``$from`` statement touching semiseg, or None if it does not."""
    if isinstance(statement, ast.Import):
        if not any(_is_semiseg(alias.name) for alias in statement.names):
            return None
        if len(statement.names) > 1 or statement.names[0].asname:
            raise ValueError(
                f"inference.json expression ${code!r}: write '$import {PACKAGE}' and full dotted references, so the "
                "packager can find the code to ship."
            )
        return f"$import {SCRIPTS}"
    if statement.level or not _is_semiseg(statement.module or ""):
        return None
    if len(statement.names) != 1 or statement.names[0].name == "*":
        raise ValueError(f"inference.json expression ${code!r}: import one name per '$from {PACKAGE}...' statement.")
    alias = statement.names[0]
    new_ref = resolve(f"{statement.module}.{alias.name}")
    new_module, _, name = new_ref.rpartition(".")
    return f"$from {new_module} import {name}" + (f" as {alias.asname}" if alias.asname else "")


def rewrite_inference_config(config: Any) -> tuple[Any, dict[str, Path]]:
    """Rewrite the ``semiseg.`` references of a parsed ``inference.json`` for a bundle zip.

    ``_target_`` values and ``$`` expressions are rewritten to ``scripts.semiseg.<module>.<Name>``;
    ``$import semiseg`` becomes ``$import scripts`` (whose generated ``__init__`` imports the shipped modules).

    Args:
        config: the parsed JSON.

    Returns:
        ``(new_config, modules)``: a rewritten copy (equal to ``config`` when it does not mention semiseg) and the
        semiseg modules to ship.

    Raises:
        ValueError: if a reference does not resolve or a needed module cannot be shipped (see
            :func:`module_dependencies`).
    """
    roots: list[str] = []

    def resolve(ref: str) -> str:
        module, new_ref = resolve_reference(ref)
        if module is not None:
            roots.append(module)
        return new_ref

    def rewrite_expression(value: str) -> str:
        code = value[1:]
        try:
            statement = ast.parse(code.strip()).body[0] if code.strip() else None
        except SyntaxError:
            statement = None
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            rewritten = _rewrite_import(statement, code, resolve)
            if rewritten is not None:
                return rewritten
        return "$" + _REFERENCE.sub(lambda match: resolve(match.group(0)), code)

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and key == "_target_" and _is_semiseg(node):
            return resolve(node)
        if isinstance(node, str) and node.startswith("$"):
            return rewrite_expression(node)
        return node

    new_config = walk(config)
    return new_config, collect_modules(roots)


def _scripts_files(name: str, modules: dict[str, Path]) -> dict[str, str]:
    """``{arcname: text}`` of ``<name>/scripts/``: a package importing the shipped modules, empty ``__init__``s."""
    imports = "".join(f'    "{module}",\n' for module in modules)
    files = {
        f"{name}/{SCRIPTS}/__init__.py": (
            '"""semiseg code that configs/inference.json needs, copied by semiseg\'s scripts/package_bundles.py.\n\n'
            "Importing this package imports the modules below, so '$import scripts' makes\n"
            "'scripts.semiseg.<module>.<Name>' usable in config expressions.\n"
            '"""\n\nimport importlib\n\n'
            f"MODULES = (\n{imports})\n\n"
            "for _module in MODULES:\n"
            '    importlib.import_module(f"{__name__}.{_module}")\n'
        )
    }
    for module, path in modules.items():
        parts = module.split(".")
        for i in range(1, len(parts)):
            files.setdefault(f"{name}/{SCRIPTS}/{'/'.join(parts[:i])}/__init__.py", "")
        files[f"{name}/{SCRIPTS}/{'/'.join(parts)}.py"] = path.read_text()
    return dict(sorted(files.items()))


def schema_arcname(metadata: dict[str, Any]) -> str:
    """Where a bundle zip ships its metadata schema, relative to the bundle root: ``schemas/<file name of the
    metadata's "schema" URL>`` (the ``--filepath`` for ``verify_metadata``)."""
    url = metadata.get("schema")
    if not isinstance(url, str) or not url.rsplit("/", 1)[-1]:
        raise ValueError(f"metadata 'schema' must be the URL of the model-zoo schema file, got {url!r}")
    return f"schemas/{url.rsplit('/', 1)[-1]}"


def package_bundle(
    bundle_dir: Path, out_dir: Path, weights: Path | None = None, schema_dir: Path = SCHEMAS
) -> Path:
    """Zip one bundle folder, with the semiseg code its ``inference.json`` needs under ``scripts/``.

    Args:
        bundle_dir: ``bundles/<name>``.
        out_dir: where the zip goes.
        weights: ``model.pt`` to ship under ``models/``, with the ``model.json`` beside it when there is one (None:
            a zip without weights, whose inference stops with "no trained weights").
        schema_dir: where the metadata schema named by ``metadata.json``'s ``schema`` URL lies.

    Returns:
        The zip path.

    Raises:
        FileNotFoundError: if the bundle lacks a required file, ``weights`` does not exist or the schema is not in
            ``schema_dir``.
        ValueError: if ``inference.json`` needs semiseg code that cannot be shipped (see
            :func:`module_dependencies`); nothing is written then.
    """
    name = bundle_dir.name
    meta_path = bundle_dir / "configs" / "metadata.json"
    for item in INCLUDE + ("configs/metadata.json", "configs/inference.json"):
        if not (bundle_dir / item).exists():
            raise FileNotFoundError(f"bundle {bundle_dir} is missing {item}")
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"weights {weights} not found: train the bundle first (make demo)")
    metadata = json.loads(meta_path.read_text())
    version = metadata["version"]
    schema_name = schema_arcname(metadata)
    schema = schema_dir / schema_name.split("/", 1)[1]
    if not schema.is_file():
        raise FileNotFoundError(f"metadata schema {schema} not found (the zip ships it for offline verify_metadata)")
    rewritten: dict[Path, Any] = {}  # inference.json and the overlays merged with it that need semiseg
    modules: dict[str, Path] = {}
    for config_name in INFERENCE_CONFIGS:
        config_path = bundle_dir / "configs" / config_name
        if not config_path.is_file():
            continue
        original = json.loads(config_path.read_text())
        config, needed = rewrite_inference_config(original)
        modules.update(needed)
        if config != original:
            rewritten[config_path] = config
    ship_code = bool(rewritten)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for item in INCLUDE:
            path = bundle_dir / item
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                arcname = f"{name}/{file.relative_to(bundle_dir).as_posix()}"
                if file in rewritten:
                    zf.writestr(arcname, json.dumps(rewritten[file], indent=4) + "\n")
                else:
                    zf.write(file, arcname)
        if ship_code:
            for arcname, text in _scripts_files(name, modules).items():
                zf.writestr(arcname, text)
        zf.write(schema, f"{name}/{schema_name}")
        if weights is not None:
            zf.write(weights, f"{name}/models/model.pt")
            record = weights.parent / RECORD_FILE
            if record.is_file():  # the training spacing inference compares its inputs with
                zf.write(record, f"{name}/models/{RECORD_FILE}")
    return target


def shipped_modules(zip_path: Path) -> list[str]:
    """The semiseg modules inside a bundle zip, e.g. ``["semiseg.networks.deep_supervision"]``."""
    with zipfile.ZipFile(zip_path) as zf:
        names = [n.split("/", 2)[2] for n in zf.namelist() if n.count("/") >= 2 and n.split("/")[1] == SCRIPTS]
    return sorted(
        n[: -len(".py")].replace("/", ".")
        for n in names
        if n.startswith(f"{PACKAGE}/") and n.endswith(".py") and not n.endswith("__init__.py")
    )


def find_weights(name: str, weights_from: Path | None) -> Path | None:
    """The trained ``model.pt`` to ship for bundle ``name``: ``<weights_from>/<name>/models/model.pt`` when
    ``weights_from`` is given, else ``results/demo/<name>/models/model.pt`` (``make demo``) or
    ``bundles/<name>/models/model.pt`` (trained in the repository); None when there is none."""
    candidates = (
        [weights_from / name / "models" / "model.pt"]
        if weights_from is not None
        else [REPO / "results" / "demo" / name / "models" / "model.pt", REPO / "bundles" / name / "models" / "model.pt"]
    )
    return next((c for c in candidates if c.is_file()), None)


def _plan(names: list[str], named: bool, found: dict[str, Path | None], allow_no_weights: bool,
          weights_from: Path | None) -> tuple[list[str], list[str]]:
    """``(bundles to package, bundles skipped for want of weights)``; exits with one line when there is nothing
    to package or a bundle named on the command line has no weights."""
    missing = [name for name in names if found[name] is None]
    if allow_no_weights or not missing:
        return names, []
    where = weights_from or "results/demo or bundles/<name>"
    train = ("run `make demo` or train the bundle (python -m monai.bundle run training --config_file "
             "bundles/<name>/configs/train.json)")
    without = ("or pass --allow-no-weights (make package PACKAGE_ARGS=--allow-no-weights) to ship zips whose "
               "inference stops with 'no trained weights'")
    if named:
        trained = [p.name for p in bundle_dirs(REPO / "bundles") if find_weights(p.name, weights_from) is not None]
        others = f"; bundles with weights: {', '.join(trained)}" if trained else ""
        sys.exit(f"package_bundles: no trained weights (models/model.pt under {where}) for {', '.join(missing)}: "
                 f"{train}, {without}{others}")
    trained = [name for name in names if found[name] is not None]
    if not trained:
        sys.exit(f"package_bundles: no bundle has trained weights (models/model.pt under {where}): {train}, then "
                 f"`make package` packs every bundle with weights (one: make package PACKAGE_ARGS=<name>), {without}")
    return trained, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*",
                        help="bundle names, each of which must have weights (default: every bundle under bundles/ "
                             "that has weights; the others are listed as skipped)")
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--weights-from", type=Path, default=None,
                        help="folder with <bundle>/models/model.pt to ship (default: results/demo, then the bundle's "
                             "own models/)")
    parser.add_argument("--allow-no-weights", action="store_true",
                        help="package bundles without trained weights too (their inference stops, saying so)")
    args = parser.parse_args(argv)
    names = args.bundles or [p.name for p in bundle_dirs(REPO / "bundles")]
    found = {name: find_weights(name, args.weights_from) for name in names}
    packed, skipped = _plan(names, bool(args.bundles), found, args.allow_no_weights, args.weights_from)
    for name in packed:
        weights = found[name]
        try:
            target = package_bundle(REPO / "bundles" / name, args.out, weights)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f"cannot package bundle {name!r}: {err}")
        note = f"with weights {weights}" if weights is not None else "WITHOUT weights (--allow-no-weights)"
        code = shipped_modules(target)
        print(f"{target} ({note}{'; ships ' + ', '.join(code) if code else ''})")
    if skipped:
        where = args.weights_from or "results/demo or bundles/<name>"
        print(f"skipped {len(skipped)} bundle{'s' * (len(skipped) > 1)} without trained weights (models/model.pt "
              f"under {where}): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
