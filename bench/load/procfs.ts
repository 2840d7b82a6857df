/**
 * What Linux says about a process from outside it: CPU time, resident memory,
 * the open-file limit. The load run measures each server in its own process this
 * way, so the clients' and the orchestrator's work never counts as the server's.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

let clockTicks: number | null = null;

/** Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 almost everywhere). */
function ticksPerSecond(): number {
  if (clockTicks === null) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** User + system CPU of every thread of `pid` so far, in ms (10 ms resolution); null once it is gone. */
export function cpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name may hold spaces and parentheses: fields start after the last ')'
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / ticksPerSecond();
  } catch {
    return null;
  }
}

/** Resident memory of `pid` in KB (VmRSS), or null. */
export function rssKB(pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** This process's soft limit of open files (children inherit it), or null off Linux. */
export function openFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : null;
  } catch {
    return null;
  }
}

/** Pids of the processes whose command name is `comm` (e.g. `redis-server`). */
export function pidsNamed(comm: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, 'utf8').trim() === comm) pids.push(Number(d));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** Busy and total time of the whole machine (jiffies) and its CPU count, or null. */
export function machineCpu(): { busy: number; total: number; cpus: number } | null {
  try {
    const lines = readFileSync('/proc/stat', 'utf8').split('\n');
    const f = lines[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { busy: total - idle, total, cpus: lines.filter((l) => /^cpu\d/.test(l)).length };
  } catch {
    return null;
  }
}
