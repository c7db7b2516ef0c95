// Status: this node (health, version, uptime, disk), the cluster's nodes, groups and leaders (when the
// node is part of a cluster), and the writers that pushed profiles recently.

import { api, type NodeStatus } from '../api';
import type { App } from '../main';
import { describeHealth, escapeHtml, formatDuration, formatTime, formatValue } from '../format';
import { errorBox, h } from './dom';

/** Renders an array of objects as a table with a column per key (shapes may grow: show what comes). */
export function genericTable(rows: Record<string, unknown>[], preferred: string[]): HTMLTableElement {
  const keys: string[] = [];
  for (const key of preferred) if (rows.some((row) => key in row)) keys.push(key);
  for (const row of rows) for (const key of Object.keys(row)) if (!keys.includes(key)) keys.push(key);
  const cell = (value: unknown): string => {
    if (value === null || value === undefined) return '';
    if (Array.isArray(value)) return value.map((item) => (typeof item === 'object' ? JSON.stringify(item) : String(item))).join(', ');
    if (typeof value === 'object') return JSON.stringify(value);
    return String(value);
  };
  const table = h('table', { class: 'data' });
  table.innerHTML =
    `<thead><tr>${keys.map((key) => `<th>${escapeHtml(key)}</th>`).join('')}</tr></thead><tbody>` +
    rows.map((row) => `<tr>${keys.map((key) => `<td>${escapeHtml(cell(row[key]))}</td>`).join('')}</tr>`).join('') +
    '</tbody>';
  return table;
}

export class StatusView {
  readonly element: HTMLDivElement;
  private readonly node: HTMLElement;
  private readonly cluster: HTMLElement;
  private readonly writers: HTMLElement;
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private app: App) {
    this.node = h('section', { class: 'card node-status' });
    this.cluster = h('section', { class: 'card cluster-status' });
    this.writers = h('section', { class: 'card writers' });
    this.element = h('div', { class: 'status' }, this.node, this.cluster, this.writers);
  }

  async load(): Promise<void> {
    clearInterval(this.timer);
    await this.refresh();
    this.app.loaded();
    this.timer = setInterval(() => {
      if (this.app.state.view !== 'status') clearInterval(this.timer);
      else void this.refresh();
    }, 10_000);
  }

  private async refresh(): Promise<void> {
    const [health, status, cluster] = await Promise.allSettled([api.healthz(), api.status(), api.clusterStatus()]);
    this.drawNode(health, status);
    this.drawCluster(cluster);
    this.drawWriters(status);
  }

  private drawNode(health: PromiseSettledResult<string>, status: PromiseSettledResult<NodeStatus>): void {
    const { healthy, detail } = describeHealth(health);
    const parts: (HTMLElement | string)[] = [
      h('h2', {}, 'This node'),
      h('p', {}, h('span', { class: `badge ${healthy ? 'ok' : 'bad'}` }, healthy ? 'healthy' : 'unhealthy'), ` ${location.host}`),
    ];
    if (detail) parts.push(errorBox(detail));
    if (status.status === 'fulfilled') {
      const node = status.value;
      const list = h('dl', { class: 'facts' });
      const fact = (name: string, value: string) => list.append(h('dt', {}, name), h('dd', {}, value));
      fact('Version', node.version);
      fact('Up since', `${formatTime(node.startedMs)} (${formatDuration(node.uptimeSeconds)})`);
      fact('Data directory', node.dataDir);
      fact('Disk (SST files)', formatValue(node.diskBytes, 'bytes'));
      fact('Retention', formatDuration(node.retentionSeconds));
      parts.push(list);
    } else {
      parts.push(errorBox(`status: ${String(status.reason)}`));
    }
    this.node.replaceChildren(...parts);
  }

  private drawCluster(cluster: PromiseSettledResult<Record<string, unknown> | null>): void {
    const parts: (HTMLElement | string)[] = [h('h2', {}, 'Cluster')];
    if (cluster.status === 'rejected') {
      parts.push(errorBox(`cluster status: ${cluster.reason instanceof Error ? cluster.reason.message : String(cluster.reason)}`));
    } else if (cluster.value === null) {
      parts.push(
        h('p', { class: 'single-node' }, 'Single node: this node does not run in a cluster (no /api/v1/cluster/status), so it holds every shard itself.'),
        genericTable([{ id: 'local', address: location.host, state: 'serving', groups: 'all (group 0)' }], []),
      );
    } else {
      const data = cluster.value;
      const nodes = Array.isArray(data.nodes) ? (data.nodes as Record<string, unknown>[]) : [];
      const groups = Array.isArray(data.groups) ? (data.groups as Record<string, unknown>[]) : [];
      const rest = Object.entries(data).filter(([key]) => key !== 'nodes' && key !== 'groups');
      if (rest.length) {
        const list = h('dl', { class: 'facts' });
        for (const [key, value] of rest) list.append(h('dt', {}, key), h('dd', {}, typeof value === 'object' ? JSON.stringify(value) : String(value)));
        parts.push(list);
      }
      parts.push(h('h3', {}, `Nodes (${nodes.length})`), genericTable(nodes, ['id', 'address', 'region', 'zone', 'state', 'reachable']));
      // Replicas read better as one line each: "node 2 leader (applied 41, lag 0)".
      const groupRows = groups.map((group) => {
        const replicas = group.replicas;
        if (!Array.isArray(replicas)) return group;
        return {
          ...group,
          replicas: replicas
            .map((replica: Record<string, unknown>) =>
              'nodeId' in replica
                ? `node ${replica.nodeId} ${replica.role ?? ''} (applied ${replica.appliedIndex ?? '?'}, lag ${replica.lag ?? '?'})`
                : JSON.stringify(replica),
            )
            .join('; '),
        };
      });
      parts.push(h('h3', {}, `Groups (${groups.length})`), genericTable(groupRows, ['group', 'id', 'isMetadata', 'leader', 'term', 'commitIndex', 'applyIndex', 'voters', 'replicas']));
    }
    this.cluster.replaceChildren(...parts);
  }

  private drawWriters(status: PromiseSettledResult<NodeStatus>): void {
    const parts: (HTMLElement | string)[] = [h('h2', {}, 'Agents that pushed recently')];
    if (status.status === 'fulfilled') {
      const node = status.value;
      parts.push(
        h('p', { class: 'muted' }, `Writers seen by this node in the last hour, told apart by the first of the labels ${node.writerLabels.join(', ')} on their series. Counted since the node started.`),
      );
      if (!node.writers.length) {
        parts.push(h('p', {}, 'No writes since this node started.'));
      } else {
        const rows = node.writers.map((writer) => ({
          writer: writer.label ? `${writer.label}=${writer.value}` : writer.value,
          'last push': `${formatDuration(Math.max(0, (node.nowMs - writer.lastSeenMs) / 1000))} ago`,
          'first push': formatTime(writer.firstSeenMs),
          writes: writer.writes,
          profiles: writer.profiles,
          'profile names': writer.profileNames.join(', '),
        }));
        parts.push(genericTable(rows, []));
      }
    }
    this.writers.replaceChildren(...parts);
  }
}
