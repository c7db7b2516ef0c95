// Small DOM helpers.

import { ApiError } from '../api';
import type { AppState } from '../state';

type Attributes = Record<string, string | number | boolean | undefined | ((event: Event) => void)>;

/** Creates an element with attributes (`on*` keys become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    if (typeof value === 'function') {
      element.addEventListener(key.slice(2).toLowerCase(), value as EventListener);
    } else if (key === 'class') {
      element.className = String(value);
    } else if (value === true) {
      element.setAttribute(key, '');
    } else {
      element.setAttribute(key, String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child);
  }
  return element;
}

/** Calls `run` once `wait` ms after the last call. */
export function debounce<A extends unknown[]>(run: (...args: A) => void, wait: number): (...args: A) => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return (...args: A) => {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => run(...args), wait);
  };
}

/** An error message, with a Retry button when `retry` is given. */
export function errorBox(message: string, retry?: () => void): HTMLElement {
  return h(
    'div',
    { class: 'error', role: 'alert' },
    message,
    retry ? h('button', { type: 'button', class: 'retry', onclick: retry }, 'Retry') : null,
  );
}

/**
 * The error box of a failed query: Retry, and when shard groups could not answer (503 Unavailable),
 * a button that asks for partial answers (`partial=1` in the URL) instead.
 */
export function queryError(
  error: unknown,
  app: { state: AppState; update(changes: Partial<AppState>, reload: boolean): void },
  retry: () => void,
): HTMLElement {
  const box = errorBox(error instanceof Error ? error.message : String(error), retry);
  if (error instanceof ApiError && error.status === 503 && !app.state.partial) {
    box.append(h('button', { type: 'button', class: 'partial', onclick: () => app.update({ partial: true }, true) }, 'Show partial results'));
  }
  return box;
}
