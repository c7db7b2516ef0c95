// Kiln's web UI: the shell (header, navigation), the state kept in the URL, and the views.

import './style.css';
import { type AppState, parseState, serializeState } from './state';
import { h } from './views/dom';
import { CompareView } from './views/compare';
import { ExploreView } from './views/explore';
import { StatusView } from './views/status';

export class App {
  state: AppState;
  private readonly main: HTMLElement;
  private readonly nav: HTMLElement;
  private explore: ExploreView | null = null;
  private compare: CompareView | null = null;
  private status: StatusView | null = null;
  /** Completed loads, for tests and benchmarks to wait on. */
  loads = 0;

  constructor(root: HTMLElement) {
    this.state = parseState(location.search);
    this.nav = h('nav', { class: 'tabs' });
    this.main = h('main');
    root.append(h('header', { class: 'top' }, h('a', { class: 'brand', href: '/' }, h('span', { class: 'logo' }), 'Kiln'), this.nav), this.main);
    // "/" jumps to the flame graph search, as in many tools.
    window.addEventListener('keydown', (event) => {
      const target = event.target as HTMLElement;
      if (event.key !== '/' || target.closest('input, textarea, select')) return;
      const search = document.querySelector<HTMLInputElement>('main .flame-search');
      if (search) {
        event.preventDefault();
        search.focus();
      }
    });
    window.addEventListener('popstate', () => {
      this.state = parseState(location.search);
      this.show();
    });
    this.show();
  }

  /** Changes the state; `reload` runs the queries again, `push` adds a history entry. */
  update(changes: Partial<AppState>, reload: boolean, push = reload): void {
    this.state = { ...this.state, ...changes };
    const url = `${location.pathname}${serializeState(this.state)}`;
    if (push) history.pushState(null, '', url);
    else history.replaceState(null, '', url);
    if (reload) this.show();
  }

  /** Writes the current state to the URL without a new history entry. */
  replaceUrl(): void {
    history.replaceState(null, '', `${location.pathname}${serializeState(this.state)}`);
  }

  /** Marks a view's load as started: a progress bar shows under the header until `loaded`. */
  busy(): void {
    document.body.classList.add('busy');
  }

  /** Marks a view's load as done. */
  loaded(): void {
    this.loads += 1;
    document.body.dataset.loads = String(this.loads);
    document.body.classList.remove('busy');
  }

  /** The profile panel of the current view (tests and benchmarks read it). */
  get panel() {
    return this.state.view === 'compare' ? this.compare?.panel : this.explore?.panel;
  }

  get flame() {
    return this.panel?.flame;
  }

  private show(): void {
    const view = this.state.view;
    this.nav.replaceChildren(
      ...(
        [
          ['explore', 'Explore'],
          ['compare', 'Compare'],
          ['status', 'Status'],
        ] as const
      ).map(([name, label]) =>
        h(
          'a',
          {
            href: `?view=${name}`,
            class: name === view ? 'active' : '',
            onclick: (event: Event) => {
              event.preventDefault();
              this.update({ view: name, zoom: [], fn: '', search: '' }, true);
            },
          },
          label,
        ),
      ),
    );
    document.title = `Kiln · ${view[0].toUpperCase()}${view.slice(1)}`;
    if (view === 'explore') {
      this.explore ??= new ExploreView(this);
      this.main.replaceChildren(this.explore.element);
      void this.explore.load(this.state);
    } else if (view === 'compare') {
      this.compare ??= new CompareView(this);
      this.main.replaceChildren(this.compare.element);
      void this.compare.load(this.state);
    } else {
      this.status ??= new StatusView(this);
      this.main.replaceChildren(this.status.element);
      void this.status.load();
    }
  }
}

declare global {
  interface Window {
    kiln: App;
  }
}

const root = document.getElementById('app');
if (root) window.kiln = new App(root);
