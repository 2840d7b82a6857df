import { Column, Entity, PrimaryColumn } from 'typeorm';

/** A setting of the whole cluster, such as `cluster_id`, which namespaces its Redis keys. */
@Entity({ name: 'cluster_settings' })
export class ClusterSetting {
  @PrimaryColumn({ type: 'text' })
  key!: string;

  @Column({ type: 'text' })
  value!: string;
}
