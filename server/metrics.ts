/** Prometheus metrics of one node, in a registry of its own (tests build many apps). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ClusterMetrics } from './cluster/postgres-cluster.js';
import type { TickerMetrics } from './metering/ticker.js';

/** Every metric the node exports on `/metrics`. */
export class Metrics implements TickerMetrics, ClusterMetrics {
  readonly registry = new Registry();
  readonly sockets = new Gauge({ name: 'chatmeter_sockets', help: 'Connected sockets', registers: [this.registry] });
  readonly activeChats = new Gauge({ name: 'chatmeter_active_chats', help: 'Active chats this node knows of (every node tracks the whole cluster\'s; it settles those of its leases)', registers: [this.registry] });
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

  readonly tickLag = new Histogram({
    name: 'chatmeter_tick_lag_seconds',
    help: 'How late a tick slot started after it was due (event loop or database pressure)',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly redisUp = new Gauge({ name: 'chatmeter_redis_up', help: '1 while this node is connected to Redis, 0 while not or without REDIS_URL', registers: [this.registry] });
  readonly presenceDegraded = new Gauge({
    name: 'chatmeter_presence_degraded',
    help: '1 while presence is this node\'s sockets only (Redis down or catching up)',
    registers: [this.registry],
  });
  readonly webhookAttempts = new Counter({
    name: 'chatmeter_webhook_attempts_total',
    help: 'Webhook delivery attempts by outcome: delivered, retry (will be tried again), gave_up (failed after 24 h)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly webhookLatency = new Histogram({
    name: 'chatmeter_webhook_delivery_seconds',
    help: 'From the change to its event\'s delivery',
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300, 3600],
    registers: [this.registry],
  });
  /** Pending and failed events of the whole cluster, counted when scraped (set by the app). */
  readonly webhookEvents = new Gauge({
    name: 'chatmeter_webhook_events',
    help: 'Webhook events of the cluster by status: pending (not yet delivered) and failed (given up)',
    labelNames: ['status'] as const,
    registers: [this.registry],
  });
  readonly leaseShards = new Gauge({ name: 'chatmeter_lease_shards', help: 'Settlement shards this node holds a lease on', registers: [this.registry] });
  readonly clusterNodes = new Gauge({ name: 'chatmeter_cluster_nodes', help: 'Live nodes this node sees, itself included', registers: [this.registry] });
  readonly leaseAcquisitions = new Counter({
    name: 'chatmeter_lease_acquisitions_total',
    help: 'Settlement leases taken (at start, from a node that left or died, on rebalancing)',
    registers: [this.registry],
  });
  readonly leaseLosses = new Counter({
    name: 'chatmeter_lease_losses_total',
    help: 'Settlement leases lost without handing them over (expired, or refused by the fence)',
    registers: [this.registry],
  });
  readonly fencedSettlements = new Counter({
    name: 'chatmeter_fenced_settlements_total',
    help: 'Chat settlements refused by the fence: this node had lost the lease',
    registers: [this.registry],
  });
  readonly busySettlements = new Counter({
    name: 'chatmeter_busy_settlements_total',
    help: 'Chats a tick skipped because another transaction held their rows (settled at their next tick)',
    registers: [this.registry],
  });
  readonly clusterReconcileErrors = new Counter({
    name: 'chatmeter_cluster_reconcile_errors_total',
    help: 'Failed looks at the cluster (membership and lease renewal)',
    registers: [this.registry],
  });
  readonly clockOffset = new Gauge({
    name: 'chatmeter_clock_offset_seconds',
    help: 'The database\'s clock minus this node\'s, as last measured (billing uses the database\'s)',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  observeLag(seconds: number): void {
    this.tickLag.observe(seconds);
  }

  fenced(chats: number): void {
    this.fencedSettlements.inc(chats);
  }

  busy(chats: number): void {
    this.busySettlements.inc(chats);
  }

  leasesAcquired(n: number): void {
    this.leaseAcquisitions.inc(n);
  }

  leasesLost(n: number): void {
    this.leaseLosses.inc(n);
  }

  reconcileFailed(): void {
    this.clusterReconcileErrors.inc();
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
