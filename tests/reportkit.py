"""Report plug-ins used by tests/test_report.py through `--plugin tests.reportkit:NAME`."""

from __future__ import annotations

from typing import Any


def good(view: Any) -> list[dict[str, Any]]:
    """A well-behaved plug-in: one section with a figure it draws itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = view.jobs()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(range(len(done)), [j.metric("value") or 0 for j in done])
    fig.savefig(view.figure_path("values.png"))
    plt.close(fig)
    return [
        {
            "title": "Values by job",
            "body": f"{len(done)} jobs of sweep `{view.sweep}` done.\n\n![values](values.png)",
            "figures": ["values.png"],
        }
    ]


def boom(view: Any) -> list[dict[str, Any]]:
    raise RuntimeError(f"history.json is missing from every job of {view.sweep}")


def liar(view: Any) -> list[dict[str, Any]]:
    return [{"title": "Ghost", "body": "![x](ghost.png)", "figures": ["ghost.png"]}]
