// Typed access to kiln-node's HTTP JSON API (docs/http-api.md, docs/openapi.yaml). Only this module
// talks to the network.

export interface ProfileType {
  id: string;
  name: string;
  sampleType: string;
  sampleUnit: string;
  periodType: string;
  periodUnit: string;
  delta: boolean;
}

export interface Frame {
  function: string;
  file?: string;
  binary?: string;
}

export interface TreeNodeJson {
  frame?: number;
  parent?: number;
  self: number;
  total: number;
  baselineSelf?: number;
  baselineTotal?: number;
}

export interface StackTreeJson {
  frames: Frame[];
  nodes: TreeNodeJson[];
}

export interface TopRow {
  frame: Frame;
  flat: number;
  cum: number;
  baselineFlat?: number;
  baselineCum?: number;
}

export interface Truncation {
  nodesRemoved: number;
  valueRemoved: number;
  rowsRemoved: number;
}

export interface Coverage {
  groupsTotal: number;
  missing: { groupId: number; reason: string }[];
}

export interface MergeResult {
  profileType?: ProfileType;
  total: number;
  profiles: number;
  series: number;
  format?: string;
  tree?: StackTreeJson;
  top?: { rows: TopRow[] };
  truncation: Truncation;
  coverage: Coverage;
}

export interface DiffResult {
  profileType?: ProfileType;
  totalA: number;
  totalB: number;
  tree?: StackTreeJson;
  top?: { rows: TopRow[] };
  truncation: Truncation;
  coverage: Coverage;
}

export interface RangeResult {
  profileType?: ProfileType;
  stepMs: number;
  series: { labels: Record<string, string>; points: { timestampMs: number; value: number }[] }[];
  coverage: Coverage;
}

export interface WriterInfo {
  label: string;
  value: string;
  firstSeenMs: number;
  lastSeenMs: number;
  writes: number;
  profiles: number;
  profileNames: string[];
}

export interface NodeStatus {
  version: string;
  startedMs: number;
  uptimeSeconds: number;
  nowMs: number;
  dataDir: string;
  diskBytes: number;
  retentionSeconds: number;
  uiEmbedded: boolean;
  writers: WriterInfo[];
  writerLabels: string[];
}

/** An error answer of the API, with its HTTP status and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The gRPC code name the node gave, e.g. `Unavailable`. */
    readonly code = '',
  ) {
    super(message);
  }
}

type Params = Record<string, string | number | undefined>;

const flag = (on: boolean) => (on ? 'true' : undefined);

/** Says which shard groups are missing from an answer, or '' when it is complete. */
export function coverageWarning(coverage: Coverage | undefined): string {
  const missing = coverage?.missing ?? [];
  if (!missing.length) return '';
  return `Partial answer: ${missing.length} of ${coverage?.groupsTotal ?? '?'} shard groups missing (${missing
    .map((group) => `group ${group.groupId}: ${group.reason}`)
    .join('; ')})`;
}

function url(path: string, params: Params = {}): string {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== '') query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function request(path: string, params: Params, signal?: AbortSignal): Promise<Response> {
  const response = await fetch(url(path, params), { signal });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let code = '';
    try {
      const body = await response.json();
      if (body && typeof body.error === 'string') message = body.error;
      if (body && typeof body.code === 'string') code = body.code;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new ApiError(response.status, message, code);
  }
  return response;
}

async function json<T>(path: string, params: Params = {}, signal?: AbortSignal): Promise<T> {
  return (await request(path, params, signal)).json() as Promise<T>;
}

export const api = {
  profileTypes: (from: string) =>
    json<{ types: ProfileType[] }>('/api/v1/profile-types', { from }).then((answer) => answer.types),
  labels: (selector: string, from: string, to: string) =>
    json<{ names: string[] }>('/api/v1/labels', { selector, from, to }).then((answer) => answer.names),
  labelValues: (name: string, selector: string, from: string, to: string) =>
    json<{ values: string[] }>(`/api/v1/labels/${encodeURIComponent(name)}/values`, { selector, from, to }).then(
      (answer) => answer.values,
    ),
  mergeTree: (selector: string, from: string, to: string, partial: boolean, signal?: AbortSignal) =>
    json<MergeResult>('/api/v1/query/merge', { selector, from, to, format: 'tree', partial: flag(partial) }, signal),
  mergeTop: (selector: string, from: string, to: string, partial: boolean, signal?: AbortSignal) =>
    json<MergeResult>('/api/v1/query/merge', { selector, from, to, format: 'top', partial: flag(partial) }, signal),
  range: (selector: string, from: string, to: string, sumBy: string, partial: boolean, signal?: AbortSignal) =>
    json<RangeResult>('/api/v1/query/range', { selector, from, to, sum_by: sumBy, partial: flag(partial) }, signal),
  diff: (
    a: { selector: string; from: string; to: string },
    b: { selector: string; from: string; to: string },
    partial: boolean,
    signal?: AbortSignal,
  ) =>
    json<DiffResult>(
      '/api/v1/query/diff',
      { a: a.selector, a_from: a.from, a_to: a.to, b: b.selector, b_from: b.from, b_to: b.to, partial: flag(partial) },
      signal,
    ),
  status: () => json<NodeStatus>('/api/v1/status'),
  /** The cluster's status, or `null` when this node has no cluster endpoint (404). */
  clusterStatus: async (): Promise<Record<string, unknown> | null> => {
    try {
      return await json<Record<string, unknown>>('/api/v1/cluster/status');
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return null;
      throw error;
    }
  },
  healthz: async (): Promise<string> => (await (await fetch('/healthz')).text()).trim(),
};
