// The metrics graph: the selection's value over time (range query), one line per series or per sum-by
// group; dragging across it selects a time range.

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import type { RangeResult } from '../api';
import { formatTime, formatValue } from '../format';
import { h } from './dom';

const PALETTE = ['#e8590c', '#1c7ed6', '#2f9e44', '#ae3ec9', '#f59f00', '#0ca678', '#d6336c', '#495057', '#5c7cfa', '#a61e4d'];

export function seriesLabel(labels: Record<string, string>): string {
  const entries = Object.entries(labels);
  if (!entries.length) return 'total';
  return `{${entries.map(([name, value]) => `${name}="${value}"`).join(', ')}}`;
}

/** Aligns series on the union of their timestamps (seconds), gaps as null, as uPlot wants. */
export function alignSeries(result: RangeResult): [number[], ...(number | null)[][]] {
  const stamps = new Set<number>();
  for (const series of result.series) for (const point of series.points) stamps.add(point.timestampMs);
  const xs = [...stamps].sort((a, b) => a - b);
  const index = new Map(xs.map((stamp, position) => [stamp, position]));
  const columns = result.series.map((series) => {
    const column: (number | null)[] = new Array(xs.length).fill(null);
    for (const point of series.points) column[index.get(point.timestampMs)!] = point.value;
    return column;
  });
  return [xs.map((stamp) => stamp / 1000), ...columns];
}

export class MetricsChart {
  readonly element: HTMLDivElement;
  private plot: uPlot | null = null;
  private readonly holder: HTMLDivElement;
  private readonly note: HTMLDivElement;
  private readonly observer: ResizeObserver;

  constructor(
    private onBrush: (fromMs: number, toMs: number) => void,
    private height = 170,
  ) {
    this.holder = h('div', { class: 'metrics-plot' });
    this.note = h('div', { class: 'metrics-note' });
    this.element = h('div', { class: 'metrics' }, this.holder, this.note);
    this.observer = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: this.height });
    });
    this.observer.observe(this.element);
  }

  private width(): number {
    return Math.max(200, this.element.clientWidth - 2);
  }

  /** Draws a range answer over `[fromMs, toMs]`. */
  set(result: RangeResult, fromMs: number, toMs: number): void {
    this.plot?.destroy();
    this.plot = null;
    const unit = result.profileType?.sampleUnit ?? '';
    const data = alignSeries(result);
    const points = data[0].length;
    this.note.textContent = points
      ? `${result.series.length} series · step ${formatValue(result.stepMs * 1e6, 'nanoseconds')} · drag to select a time range`
      : 'No samples in this time range.';
    const options: uPlot.Options = {
      width: this.width(),
      height: this.height,
      scales: { x: { time: true, range: () => [fromMs / 1000, toMs / 1000] } },
      series: [
        { value: (_plot, value) => (value == null ? '' : formatTime(value * 1000)) },
        ...result.series.map((series, index) => ({
          label: seriesLabel(series.labels),
          stroke: PALETTE[index % PALETTE.length],
          fill: result.series.length === 1 ? `${PALETTE[0]}22` : undefined,
          width: 1.5,
          spanGaps: false,
          points: { show: true, size: 5 },
          value: (_plot: uPlot, value: number | null) => (value == null ? '–' : formatValue(value, unit)),
        })),
      ],
      axes: [
        {},
        { size: 72, values: (_plot, values) => values.map((value) => formatValue(value, unit)) },
      ],
      cursor: { drag: { x: true, y: false, setScale: false } },
      legend: { show: result.series.length > 0 },
      hooks: {
        setSelect: [
          (plot) => {
            const { left, width } = plot.select;
            if (width < 3) return;
            const from = Math.round(plot.posToVal(left, 'x') * 1000);
            const to = Math.round(plot.posToVal(left + width, 'x') * 1000);
            plot.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            this.onBrush(from, to);
          },
        ],
      },
    };
    this.plot = new uPlot(options, data as uPlot.AlignedData, this.holder);
  }

  /** The plot's drawing area in page coordinates (tests drag across it). */
  get overlay(): HTMLElement | null {
    return this.holder.querySelector('.u-over');
  }
}
