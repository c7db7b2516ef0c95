import { describe, expect, it } from 'vitest';
import { describeHealth } from './format';

describe('health on the status page', () => {
  it('is healthy only on ok', () => {
    expect(describeHealth({ status: 'fulfilled', value: 'ok' })).toEqual({ healthy: true, detail: '' });
  });

  // Regression: a node whose raft groups had stopped answered /healthz with 503 and a message naming
  // them, and the page showed only "unhealthy", without the node's reason.
  it("shows the node's reason when it is unhealthy", () => {
    const message =
      'unhealthy: the raft of groups 1, 4 stopped on this node after a storage failure (a full disk or an I/O error; the node\'s log says which); restart the node once the cause is fixed';
    expect(describeHealth({ status: 'fulfilled', value: `${message}\n` })).toEqual({ healthy: false, detail: message });
  });

  it('says why the check itself failed', () => {
    const result = describeHealth({ status: 'rejected', reason: new TypeError('Failed to fetch') });
    expect(result).toEqual({ healthy: false, detail: 'health check failed: Failed to fetch' });
    expect(describeHealth({ status: 'fulfilled', value: '' }).healthy).toBe(false);
  });
});
