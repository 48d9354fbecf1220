import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../models/onnx/zoo.js';
import { FastCounter, FastHistogram, Metrics } from '../agent/telemetry/metrics.js';

const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The same metrics twice: prom-client's own classes in one registry, the fast ones in another. */
function pair(): { prom: Registry; fast: Registry; h: [Histogram<string>, FastHistogram]; c: [Counter<string>, FastCounter] } {
  const prom = new Registry();
  const fast = new Registry();
  const hc = { name: 'x_seconds', help: 'a histogram', labelNames: ['model', 'version', 'api'], buckets: BUCKETS };
  const cc = { name: 'x_total', help: 'a counter', labelNames: ['model', 'version', 'api', 'code'] };
  return {
    prom,
    fast,
    h: [new Histogram({ ...hc, registers: [prom] }), new FastHistogram({ ...hc, registry: fast })],
    c: [new Counter({ ...cc, registers: [prom] }), new FastCounter({ ...cc, registry: fast })],
  };
}

describe('fast Prometheus metrics', () => {
  it('expose exactly what prom-client exposes, text and JSON', async () => {
    const rand = mulberry32(11);
    const { prom, fast, h, c } = pair();
    const children = new Map<string, [ReturnType<Histogram<string>['labels']>, ReturnType<FastHistogram['labels']>]>();
    const counters = new Map<string, [ReturnType<Counter<string>['labels']>, ReturnType<FastCounter['labels']>]>();
    for (let i = 0; i < 3000; i++) {
      const model = ['a', 'b"q', 'c\\n'][Math.floor(rand() * 3)] as string;
      const version = String(1 + Math.floor(rand() * 3));
      const api = rand() < 0.5 ? 'v1' : 'v2';
      const key = `${model}/${version}/${api}`;
      if (!children.has(key)) children.set(key, [h[0].labels(model, version, api), h[1].labels(model, version, api)]);
      const code = rand() < 0.9 ? '200' : '400';
      const ckey = `${key}/${code}`;
      if (!counters.has(ckey)) counters.set(ckey, [c[0].labels(model, version, api, code), c[1].labels(model, version, api, code)]);
      // Values across every bucket, exactly on bounds, and beyond the last one.
      const r = rand();
      const v = r < 0.1 ? (BUCKETS[Math.floor(rand() * BUCKETS.length)] as number) : r < 0.15 ? 20 + rand() : rand() ** 6 * 3;
      const [ph, fh] = children.get(key)!;
      // A child only creates its series on first use: leave some children unused for a while.
      if (rand() < 0.8) {
        ph.observe(v);
        fh.observe(v);
      }
      const [pc, fc] = counters.get(ckey)!;
      pc.inc();
      fc.inc();
      if (rand() < 0.02) {
        const labels = { model, version: '', api, code: '503' };
        c[0].inc(labels);
        c[1].inc(labels);
      }
      if (rand() < 0.01) {
        h[0].observe({ model, version, api }, v);
        h[1].observe({ model, version, api }, v);
      }
      if (i === 1500) {
        expect(await fast.metrics()).toBe(await prom.metrics());
        prom.resetMetrics();
        fast.resetMetrics();
      }
    }
    expect(await fast.metrics()).toBe(await prom.metrics());
    expect(await fast.getMetricsAsJSON()).toEqual(await prom.getMetricsAsJSON());
  });

  it('refuses what prom-client refuses', () => {
    const { h, c } = pair();
    expect(() => h[1].labels('a', 'b')).toThrow(/Invalid number of arguments/);
    expect(() => h[1].labels('a', '1', 'v2').observe(NaN)).toThrow(TypeError);
    expect(() => c[1].inc({ model: 'a', version: '1', api: 'v2', code: '200' }, -1)).toThrow(/decrease/);
    expect(() => c[1].inc({ model: 'a', nope: 'x' })).toThrow(/not included/);
  });

  it('Metrics.forRequest serves the request series of /metrics', async () => {
    const m = new Metrics({ processMetrics: false });
    const s = m.forRequest('mlp', 3, 'v2');
    expect(m.forRequest('mlp', 3, 'v2')).toBe(s);
    s.queue.observe(0);
    s.compute.observe(0.00002);
    s.duration.observe(0.0003);
    s.ok.inc();
    s.status(404).inc();
    const { body } = await m.render();
    expect(body).toContain('edgefleet_requests_total{model="mlp",version="3",api="v2",code="200"} 1');
    expect(body).toContain('edgefleet_requests_total{model="mlp",version="3",api="v2",code="404"} 1');
    expect(body).toContain('edgefleet_request_duration_seconds_bucket{le="0.0005",model="mlp",version="3",api="v2"} 1');
    expect(body).toContain('edgefleet_request_queue_seconds_count{model="mlp",version="3"} 1');
    expect(body).toContain('edgefleet_request_compute_seconds_sum{model="mlp",version="3"} 0.00002');
  });
});
