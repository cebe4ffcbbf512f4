"""OmegaConf resolvers used by conf/ (registered on `import trainer`; must stay torch-free)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf


def pkg_path(package: str, subdir: str = "") -> str:
    """Absolute path of `subdir` inside an installed package, so configs can point at data
    shipped in a wheel (e.g. the offline MiniLM model) without hard-coding site-packages."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"pkg_path: package {package!r} is not installed (pip install {package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise ValueError(f"pkg_path: {path} does not exist inside package {package!r}")
    return str(path.resolve())


FORMAT_COLUMNS = {"prompt_completion": {"text": "prompt", "completion": "completion"}}
PLAIN_COLUMNS = {"text": "text", "completion": None}


def format_column(role: str, data_format: str | None) -> str | None:
    """The default column of `role` (text, completion) for a data.format: prompt_completion reads
    `prompt` and `completion`, every other format `text` and no completion. conf/data sets
    `text_column: ${format_column:text,${.format}}`, so an explicit data.text_column still wins."""
    return FORMAT_COLUMNS.get(data_format or "", PLAIN_COLUMNS).get(role, PLAIN_COLUMNS[role])


def tiny_chat() -> str:
    """`${tiny_chat:}`: the folder of `model=tiny_chat`, built on first use (see trainer/models/tiny_chat.py)."""
    from trainer.models.tiny_chat import tiny_chat_path

    return tiny_chat_path()


def register_resolvers() -> None:
    """Idempotent: the Hydra plugin scan may import us more than once."""
    OmegaConf.register_new_resolver("pkg_path", pkg_path, replace=True)
    OmegaConf.register_new_resolver("format_column", format_column, replace=True)
    OmegaConf.register_new_resolver("tiny_chat", tiny_chat, replace=True)
