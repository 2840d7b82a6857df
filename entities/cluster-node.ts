import { Column, Entity, PrimaryColumn } from 'typeorm';

/** A live node of the cluster: it renews `seen_at` while it runs and deletes its row when it leaves. */
@Entity({ name: 'cluster_nodes' })
export class ClusterNode {
  @PrimaryColumn({ name: 'node_id', type: 'text' })
  nodeId!: string;

  @Column({ name: 'started_at', type: 'timestamptz' })
  startedAt!: Date;

  /** The database's clock at the node's latest renewal. */
  @Column({ name: 'seen_at', type: 'timestamptz' })
  seenAt!: Date;
}
