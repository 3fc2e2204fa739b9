"""What the docs generate at build time: the demo's pictures and the command-line reference.

- ``builder-inited``: runs :func:`segpost.demo.run_demo` (a few seconds) into ``docs/_generated/demo``
  and draws the demo's confusion matrix beside it, so the guides show what this build of segpost
  makes. ``docs/_generated`` is ignored by git and left out of the sources.
- ``.. segpost-cli::``: one section per subcommand of :func:`segpost.cli.build_parser`, with its
  usage, description, arguments and examples, read from the parser itself.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

GENERATED = "_generated"


def render_pictures(app):
    """The demo's pictures (input, truth, coarse, refined, the side-by-side figure), its confusion matrix and
    the volumes guide's phantom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segpost.demo import CLASS_NAMES, make_scene, run_demo, simulate_network
    from segpost.metrics import SegMetrics
    from segpost.upsample import resize_logits
    from segpost.viz import plot_confusion_matrix

    out = Path(app.srcdir) / GENERATED / "demo"
    run_demo(out, progress=lambda message: None)
    # The coarse prediction's confusion matrix: where the network's blur puts the errors.
    image, truth = make_scene()
    coarse = resize_logits(simulate_network(truth, len(CLASS_NAMES)), truth.shape).argmax(axis=0)
    metrics = SegMetrics(len(CLASS_NAMES), class_names=CLASS_NAMES)
    metrics.update(coarse, truth)
    figure = plot_confusion_matrix(metrics.compute())
    figure.savefig(out / "confusion.png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    render_volume(Path(app.srcdir) / GENERATED / "volumes")


def render_volume(out):
    """A CT phantom's lesion slice: the scan, the truth, the 3-D network's labels and crf_refine's."""
    import matplotlib.pyplot as plt
    import numpy as np

    import segpost
    from segpost._phantoms import ct_phantom, simulate_volume_network
    from segpost.viz import colorize, side_by_side

    out.mkdir(parents=True, exist_ok=True)
    phantom = ct_phantom((24, 96, 96), seed=101)
    logits = simulate_volume_network(phantom.labels, 3, stride=(1, 4, 4), seed=101)
    coarse = segpost.upsample_argmax(logits, phantom.labels.shape)
    refined = segpost.crf_refine(phantom.volume, logits, params="ct", spacing=phantom.spacing)
    z = int(np.argmax((phantom.labels == 2).sum(axis=(1, 2))))  # the slice through the lesion's middle
    window = np.clip((phantom.volume[z] + 160) / 400 * 255, 0, 255).astype(np.uint8)  # abdomen window
    truth = phantom.labels[z]
    figure = side_by_side([np.dstack([window] * 3), colorize(truth), colorize(coarse[z]), colorize(refined[z])],
                          ["CT slice (HU window -160..240)", "truth", "3-D network (stride 1x4x4)",
                           "crf_refine(params='ct')"],
                          errors=[None, None, coarse[z] != truth, refined[z] != truth])
    figure.savefig(out / "phantom.png", dpi=80, bbox_inches="tight")
    plt.close(figure)


def _text(parser, action):
    """An argument's help with argparse's %(default)s-style fields filled in."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


def _paragraphs(text):
    """Prose separated by blank lines, each paragraph's manual line breaks joined."""
    return [nodes.paragraph(text=" ".join(p.split())) for p in text.split("\n\n") if p.strip()]


def _arguments(parser):
    """A definition list: each argument's flags (or metavar) and help, default and choices."""
    items = nodes.definition_list()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + (action.metavar or action.dest.upper())
                if action.nargs == "?":
                    metavar = f" [{metavar.strip()}]"
            term = ", ".join(option + metavar for option in action.option_strings)
        else:
            term = action.metavar or action.dest
        details = _text(parser, action)
        if action.choices is not None:
            details += " (choices: " + ", ".join(map(str, action.choices)) + ")"
        if action.required and action.option_strings:
            details += " (required)"
        item = nodes.definition_list_item()
        item += nodes.term(text=term)
        definition = nodes.definition()
        definition += nodes.paragraph(text=details.strip())
        item += definition
        items += item
    return items


class CLIDirective(SphinxDirective):
    """``.. segpost-cli::``: the reference of every ``segpost`` subcommand, from the parser."""

    has_content = False

    def run(self):
        from segpost.cli import build_parser

        # argparse wraps usage lines to the terminal's width: fix it so every build renders the same.
        previous = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "100"
        try:
            parser = build_parser()
            result = [nodes.literal_block(text=parser.format_usage().strip())]
            result += _paragraphs(parser.description or "")
            subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            helps = {choice.dest: choice.help for choice in subcommands._choices_actions}
            for name, sub in subcommands.choices.items():
                section = nodes.section(ids=[nodes.make_id(f"segpost-{name}")], names=[f"segpost {name}"])
                section += nodes.title(text=f"segpost {name}")
                section += nodes.paragraph(text=(helps.get(name) or "").capitalize() + ".")
                section += nodes.literal_block(text=sub.format_usage().strip())
                section += _paragraphs(sub.description or "")
                section += _arguments(sub)
                if sub.epilog:
                    section += nodes.literal_block(text=sub.epilog.strip())
                self.state.document.note_implicit_target(section)
                result.append(section)
            return result
        finally:
            if previous is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = previous


def setup(app):
    app.connect("builder-inited", render_pictures)
    app.add_directive("segpost-cli", CLIDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
