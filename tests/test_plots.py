"""The shared figure style: log axes keep labelled, uncrowded ticks; legends sit outside the data;
dashed reference lines are labelled."""

import matplotlib

matplotlib.use("Agg")

from resa_utils.harness import plots  # noqa: E402


def _labels(ax, axis="y"):
    ax.figure.canvas.draw()
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    vals = ax.get_yticks() if axis == "y" else ax.get_xticks()
    return [t.get_text() for t, v in zip(ticks, vals) if lo <= v <= hi and t.get_text()]


def test_log_axis_labels_a_short_span_and_does_not_crowd_a_long_one():
    fig, (short, long) = plots.figure(2)
    short.plot([0, 1, 2], [0.24, 0.18, 0.13])
    plots.log_axis(short, "y")
    assert len(_labels(short)) >= 2  # 0.2 (and 0.15-ish neighbours) labelled inside a sub-decade span
    long.plot([1, 2, 3], [1, 1e3, 1e7])
    plots.log_axis(long, "y")
    assert 2 <= len(_labels(long)) <= 8


def test_legend_outside_and_labelled_reference_line():
    fig, (ax,) = plots.figure()
    ax.plot([0, 1], [0, 1], label="ours")
    plots.reference_line(ax, 0.5, "paper")
    plots.legend_outside(ax)
    fig.canvas.draw()
    leg = ax.get_legend()
    assert [t.get_text() for t in leg.get_texts()] == ["ours", "paper"]
    renderer = fig.canvas.get_renderer()
    assert leg.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
