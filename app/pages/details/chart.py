"""A small painted line chart over a fixed-size ring of samples.

QtCharts is not part of PySide6-Essentials, and a stats chart needs little: a few series
sharing a time axis, an automatically scaled value axis with units, and a legend. Each
sample is stored once in a ``deque(maxlen=capacity)``, so the chart's memory is fixed
however long the tab stays open.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

#: Distinguishable on light and dark backgrounds.
PALETTE = ("#2472c8", "#e5732f", "#0dbc79", "#bc3fbc")


def nice_ceiling(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^n at or above ``value`` (a readable axis maximum)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    base = 10.0**exponent
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * base * (1 + 1e-9):
            return step * base
    return 10.0 * base


def nice_binary_ceiling(value: float) -> float:
    """Like :func:`nice_ceiling` but on 1024-based units, so byte axes read 1, 2, 5 MiB."""
    if value <= 0 or not math.isfinite(value):
        return 1024.0
    unit = 1.0
    while value >= 1024 * unit and unit < 1024.0**4:
        unit *= 1024
    return nice_ceiling(value / unit) * unit


class LineChart(QWidget):
    """Series over the last ``capacity`` samples taken every ``interval`` seconds."""

    def __init__(
        self,
        title: str,
        series: Sequence[str],
        formatter: Callable[[float], str],
        *,
        capacity: int = 180,
        interval: float = 1.0,
        binary: bool = False,
        minimum_max: float = 0.0,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.series = tuple(series)
        self.formatter = formatter
        self.capacity = capacity
        self.interval = interval
        self.binary = binary
        self.minimum_max = minimum_max
        self._samples: deque[tuple[float, ...]] = deque(maxlen=capacity)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(240, 140)

    def sizeHint(self) -> QSize:
        return QSize(420, 200)

    def add_sample(self, values: Sequence[float]) -> None:
        """Append one reading, one value per series (older readings fall off)."""
        if len(values) != len(self.series):
            raise ValueError(f"expected {len(self.series)} values, got {len(values)}")
        self._samples.append(tuple(max(0.0, float(v)) for v in values))
        self.update()

    def clear(self) -> None:
        self._samples.clear()
        self.update()

    def samples(self) -> list[tuple[float, ...]]:
        return list(self._samples)

    def latest(self) -> tuple[float, ...] | None:
        return self._samples[-1] if self._samples else None

    def axis_max(self) -> float:
        peak = max((max(s) for s in self._samples), default=0.0)
        peak = max(peak, self.minimum_max)
        return nice_binary_ceiling(peak) if self.binary else nice_ceiling(peak)

    # ---- painting --------------------------------------------------------------------
    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text_color = pal.windowText().color()
        grid_color = QColor(text_color)
        grid_color.setAlpha(40)
        fm = QFontMetricsF(self.font())
        line_h = fm.height()
        top_max = self.axis_max()

        painter.fillRect(self.rect(), pal.base())
        # Title and legend with the latest values on the first line.
        painter.setPen(text_color)
        x = 6.0
        painter.drawText(QPointF(x, line_h), self.title)
        x += fm.horizontalAdvance(self.title) + 14
        latest = self.latest()
        for i, name in enumerate(self.series):
            color = QColor(PALETTE[i % len(PALETTE)])
            painter.fillRect(QRectF(x, line_h * 0.35, 10, 10), color)
            x += 14
            label = name if latest is None else f"{name} {self.formatter(latest[i])}"
            painter.drawText(QPointF(x, line_h), label)
            x += fm.horizontalAdvance(label) + 12

        labels = [self.formatter(top_max * k / 4) for k in range(5)]
        left = max(fm.horizontalAdvance(t) for t in labels) + 10
        plot = QRectF(left, line_h * 1.6, self.width() - left - 8, self.height() - line_h * 3.0)
        if plot.width() < 20 or plot.height() < 20:
            painter.end()
            return

        # Value axis: five grid lines with unit labels.
        for k in range(5):
            y = plot.bottom() - plot.height() * k / 4
            painter.setPen(QPen(grid_color, 1))
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(text_color)
            text = labels[k]
            painter.drawText(
                QPointF(plot.left() - 5 - fm.horizontalAdvance(text), y + fm.ascent() / 2 - 1),
                text,
            )
        # Time axis: "now" on the right, minutes back to the left.
        span = self.capacity * self.interval
        # Whole minutes read best ("-3 min, -2 min, -1 min, now") when the span allows it.
        ticks = int(span // 60) if span % 60 == 0 and 2 <= span // 60 <= 6 else 4
        for k in range(ticks + 1):
            xk = plot.left() + plot.width() * k / ticks
            seconds = span * (ticks - k) / ticks
            text = "now" if seconds == 0 else _ago(seconds)
            painter.setPen(QPen(grid_color, 1))
            painter.drawLine(QPointF(xk, plot.top()), QPointF(xk, plot.bottom()))
            painter.setPen(text_color)
            w = fm.horizontalAdvance(text)
            tx = min(max(xk - w / 2, plot.left()), plot.right() - w)
            painter.drawText(QPointF(tx, plot.bottom() + fm.ascent() + 3), text)

        # Series: newest sample at the right edge, one step per interval.
        count = len(self._samples)
        if count:
            step = plot.width() / max(1, self.capacity - 1)
            x0 = plot.right() - step * (count - 1)
            for i in range(len(self.series)):
                path = QPainterPath()
                for j, sample in enumerate(self._samples):
                    point = QPointF(
                        x0 + step * j, plot.bottom() - plot.height() * min(sample[i] / top_max, 1.0)
                    )
                    if j == 0:
                        path.moveTo(point)
                    else:
                        path.lineTo(point)
                pen = QPen(QColor(PALETTE[i % len(PALETTE)]), 1.6)
                painter.setPen(pen)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                if count == 1:
                    painter.drawEllipse(path.currentPosition(), 2, 2)
                else:
                    painter.drawPath(path)
        painter.end()


def _ago(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"-{int(seconds // 60)} min"
    return f"-{int(seconds)} s"
