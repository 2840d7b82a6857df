/** Read-only views of time records and allowances, for the API. */
import type { DataSource } from 'typeorm';
import type { TimeRecordView } from '../../client-sdk/src/protocol.js';

/** A pair's allowance as the API shows it. */
export interface AllowanceView {
  userId: string;
  advisorId: string;
  allocationSeconds: number;
  usedSeconds: number;
}

interface Row {
  id: string;
  chat_id: string;
  user_id: string;
  advisor_id: string;
  is_active: boolean;
  duration: number;
  free_time_used: number;
  credits_used: string;
  total_free_time_allocation: number;
  timestamp: Date;
  last_heartbeat_time: Date | null;
  ended_at: Date | null;
  end_reason: TimeRecordView['endReason'];
}

/** Reads records; never writes. */
export class TimeRecords {
  constructor(private readonly ds: DataSource) {}

  /** The chat's one record, or null before its first join. */
  async ofChat(chatId: string): Promise<TimeRecordView | null> {
    const rows: Row[] = await this.ds.query(`SELECT * FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
    return rows[0] ? toView(rows[0]) : null;
  }

  /** Every record of a user-advisor pair, newest first, with the pair's allowance (null before any). */
  async ofPair(userId: string, advisorId: string): Promise<{ allowance: AllowanceView | null; records: TimeRecordView[] }> {
    const [allowances, rows]: [Array<{ allocation_seconds: number; used_seconds: number }>, Row[]] = await Promise.all([
      this.ds.query(`SELECT allocation_seconds, used_seconds FROM free_time_allowances WHERE user_id = $1 AND advisor_id = $2`, [
        userId,
        advisorId,
      ]),
      this.ds.query(
        `SELECT * FROM conversation_time_records WHERE user_id = $1 AND advisor_id = $2 ORDER BY "timestamp" DESC, id DESC`,
        [userId, advisorId],
      ),
    ]);
    const a = allowances[0];
    return {
      allowance: a ? { userId, advisorId, allocationSeconds: a.allocation_seconds, usedSeconds: a.used_seconds } : null,
      records: rows.map(toView),
    };
  }
}

function toView(r: Row): TimeRecordView {
  return {
    id: r.id,
    chatId: r.chat_id,
    userId: r.user_id,
    advisorId: r.advisor_id,
    isActive: r.is_active,
    durationSeconds: r.duration,
    freeSecondsUsed: r.free_time_used,
    creditsUsed: r.credits_used,
    freeSecondsAllocation: r.total_free_time_allocation,
    startedAt: r.timestamp.toISOString(),
    lastHeartbeatAt: r.last_heartbeat_time?.toISOString() ?? null,
    endedAt: r.ended_at?.toISOString() ?? null,
    endReason: r.end_reason,
  };
}
