// Chart wraps uPlot: a time series chart that follows its container's width.
import { html } from 'htm/preact';
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

// Chart draws data ([xs, ...ys], xs in Unix seconds) with series (uPlot
// series options without the x series). It rebuilds the plot when the
// series change and only sets the data when the data change.
export function Chart({ data, series, height = 200, yFormat = (v) => String(v), yScale = {}, ySplits, title, testid }) {
  const box = useRef(null);
  const plot = useRef(null);
  const key = series.map((s) => s.label).join('|');

  useEffect(() => {
    const el = box.current;
    const opts = {
      width: el.clientWidth || 600,
      height,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: { x: { time: true }, y: yScale },
      axes: [
        { stroke: '#6b7280', grid: { stroke: '#eef0f3' }, ticks: { stroke: '#eef0f3' } },
        {
          stroke: '#6b7280',
          grid: { stroke: '#eef0f3' },
          ticks: { stroke: '#eef0f3' },
          size: 60,
          splits: ySplits && ((u, i, min, max) => ySplits.filter((v) => v >= min && v <= max)),
          values: (u, vals) => vals.map((v) => (v == null ? '' : yFormat(v))),
        },
      ],
      series: [{}, ...series],
    };
    plot.current = new uPlot(opts, data, el);
    const ro = new ResizeObserver(() => {
      if (plot.current && el.clientWidth) plot.current.setSize({ width: el.clientWidth, height });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, [key, height]);

  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [data]);

  return html`<figure class="chart" data-testid=${testid}>
    <figcaption>${title}</figcaption>
    <div ref=${box}></div>
  </figure>`;
}

export const stepped = uPlot.paths.stepped({ align: 1 });
