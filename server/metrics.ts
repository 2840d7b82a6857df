/** Prometheus metrics of one node, in a registry of its own (tests build many apps). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { TickerMetrics } from './metering/ticker.js';

/** Every metric the node exports on `/metrics`. */
export class Metrics implements TickerMetrics {
  readonly registry = new Registry();
  readonly sockets = new Gauge({ name: 'chatmeter_sockets', help: 'Connected sockets', registers: [this.registry] });
  readonly activeChats = new Gauge({ name: 'chatmeter_active_chats', help: 'Chats metered by this node', registers: [this.registry] });
  readonly slotDuration = new Histogram({
    name: 'chatmeter_tick_slot_seconds',
    help: 'Time to settle one tick slot (one phase bucket of chats)',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly settledChats = new Counter({ name: 'chatmeter_settled_chats_total', help: 'Chat settlements by the ticker', registers: [this.registry] });
  readonly settlementErrors = new Counter({ name: 'chatmeter_settlement_errors_total', help: 'Failed settlement batches', registers: [this.registry] });
  readonly rejectedEvents = new Counter({
    name: 'chatmeter_events_rejected_total',
    help: 'Client events answered with an error, by code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly backgroundErrors = new Counter({
    name: 'chatmeter_background_errors_total',
    help: 'Errors caught in background work (timers, pushes, Redis)',
    labelNames: ['where'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  observeSlot(seconds: number, chats: number): void {
    this.slotDuration.observe(seconds);
    this.settledChats.inc(chats);
  }

  settlementError(): void {
    this.settlementErrors.inc();
  }

  activeChatsCount(n: number): void {
    this.activeChats.set(n);
  }
}
