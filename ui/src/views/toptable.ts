// The top table: functions with flat, flat%, cum, cum%; sortable, filterable; clicking a row focuses the
// flame graph on that function.

import type { TopRow } from '../api';
import { escapeHtml, formatValue, percent } from '../format';
import { debounce, h } from './dom';

type Column = 'name' | 'flat' | 'cum';
const MAX_ROWS = 500;

export class TopTable {
  readonly element: HTMLDivElement;
  private readonly filter: HTMLInputElement;
  private readonly body: HTMLTableSectionElement;
  private readonly head: HTMLTableSectionElement;
  private readonly footer: HTMLDivElement;
  private rows: TopRow[] = [];
  private total = 0;
  private unit = '';
  private sortBy: Column = 'flat';
  private descending = true;
  private selected = '';

  constructor(private onSelect: (name: string) => void) {
    this.filter = h('input', { type: 'search', class: 'top-filter', placeholder: 'Filter functions', 'aria-label': 'filter functions' });
    this.filter.addEventListener('input', debounce(() => this.draw(), 60));
    this.head = h('thead');
    this.body = h('tbody');
    this.footer = h('div', { class: 'top-footer' });
    this.element = h(
      'div',
      { class: 'top-table' },
      this.filter,
      h('div', { class: 'table-scroll' }, h('table', { class: 'data top' }, this.head, this.body)),
      this.footer,
    );
    this.body.addEventListener('click', (event) => {
      const row = (event.target as HTMLElement).closest('tr');
      const name = row?.dataset.name;
      if (name !== undefined) this.onSelect(name);
    });
  }

  set(rows: TopRow[], total: number, unit: string): void {
    this.rows = rows;
    this.total = total;
    this.unit = unit;
    this.draw();
  }

  /** Marks the row of the function the flame graph is focused on. */
  select(name: string): void {
    this.selected = name;
    this.draw();
  }

  private header(): void {
    const cell = (column: Column, label: string, numeric: boolean) => {
      const mark = this.sortBy === column ? (this.descending ? ' ▼' : ' ▲') : '';
      return h(
        'th',
        {
          class: numeric ? 'num sortable' : 'sortable',
          'data-sort': column,
          onclick: () => {
            if (this.sortBy === column) this.descending = !this.descending;
            else {
              this.sortBy = column;
              this.descending = column !== 'name';
            }
            this.draw();
          },
        },
        label + mark,
      );
    };
    this.head.replaceChildren(
      h('tr', {}, cell('flat', 'Flat', true), h('th', { class: 'num' }, 'Flat%'), cell('cum', 'Cum', true), h('th', { class: 'num' }, 'Cum%'), cell('name', 'Function', false)),
    );
  }

  /** The rows as shown: filtered and sorted. */
  visibleRows(): TopRow[] {
    const needle = this.filter.value.trim().toLowerCase();
    const rows = needle ? this.rows.filter((row) => row.frame.function.toLowerCase().includes(needle)) : this.rows.slice();
    const sign = this.descending ? -1 : 1;
    rows.sort((left, right) => {
      let order: number;
      if (this.sortBy === 'name') order = left.frame.function.localeCompare(right.frame.function);
      else order = left[this.sortBy] - right[this.sortBy];
      // Ties keep the server's ranking (go tool pprof's order): the sort is stable.
      return order * sign;
    });
    return rows;
  }

  private draw(): void {
    this.header();
    const rows = this.visibleRows();
    const unit = this.unit;
    const html = rows
      .slice(0, MAX_ROWS)
      .map((row) => {
        const name = escapeHtml(row.frame.function);
        const title = escapeHtml([row.frame.function, row.frame.file, row.frame.binary].filter(Boolean).join('\n'));
        const selected = row.frame.function === this.selected ? ' class="selected"' : '';
        return (
          `<tr data-name="${name}"${selected} title="${title}">` +
          `<td class="num">${formatValue(row.flat, unit)}</td><td class="num">${percent(row.flat, this.total)}</td>` +
          `<td class="num">${formatValue(row.cum, unit)}</td><td class="num">${percent(row.cum, this.total)}</td>` +
          `<td class="fn">${name}</td></tr>`
        );
      })
      .join('');
    this.body.innerHTML = html;
    this.footer.textContent =
      rows.length > MAX_ROWS
        ? `Showing ${MAX_ROWS} of ${rows.length} functions; filter to see the rest.`
        : `${rows.length} of ${this.rows.length} functions`;
  }
}
