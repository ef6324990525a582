"""mkdocs hook: drop from the nav the pages that do not exist (yet), so that a guide still being written does
not break ``mkdocs build --strict``, and list every experiment's page of ``results/`` after the report."""

from pathlib import Path


def _keep(entries, docs: Path):
    kept = []
    for entry in entries:
        if isinstance(entry, str):
            if (docs / entry).exists():
                kept.append(entry)
            continue
        (title, value), = entry.items()
        if isinstance(value, list):
            value = _keep(value, docs)
            if value:
                kept.append({title: value})
        elif "://" in value or (docs / value).exists():
            kept.append({title: value})
    return kept


def _add_results(entries, docs: Path) -> None:
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            (title, value), = entry.items()
            if isinstance(value, list):
                _add_results(value, docs)
            elif value == "results/report.md":
                pages = sorted(p for p in (docs / "results").glob("*.md") if p.name != "report.md")
                entries[i + 1:i + 1] = [{p.stem: f"results/{p.name}"} for p in pages]
                return


def on_config(config, **kwargs):
    if config.get("nav"):
        docs = Path(config["docs_dir"])
        config["nav"] = _keep(config["nav"], docs)
        _add_results(config["nav"], docs)
    return config
