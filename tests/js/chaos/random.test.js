// Random faults, one after another, for CHAOS_DURATION_MS (default 2 minutes) in one volt
// under load, one in five a burst of two or three back to back; each is checked like a
// single fault. The choices come from CHAOS_SEED
// (random unless given, always printed): `CHAOS_SEED=<seed> just chaos` replays them.

import { after } from 'node:test';

import { waitFor } from '../support/volt.js';

import { FAULTS, RESULTS, assertClean, canRestartPostgres, chaosSeed, chaosTest, printResults } from './support/chaos.js';

const seed = chaosSeed();
const duration = Number(process.env.CHAOS_DURATION_MS ?? 120_000);
const keys = Object.keys(FAULTS).filter((k) => !FAULTS[k].needsPgCtl || canRestartPostgres());
const burstKeys = keys.filter((k) => !FAULTS[k].noBurst);

/**
 * Restart budgets, a margin below each supervisor's limit (supervision.md): past its limit
 * a supervisor gives up and, at the top, volt exits by design (a meltdown, for the process
 * supervisor to handle). A fault whose supervisor has no budget left waits, under load,
 * for its window to move on, so that a seed always replays the same faults.
 */
const BUDGETS = [
  // MonitoredCoreSupervisor: 3 restarts / 60 s.
  { supervisor: 'MonitoredCoreSupervisor', limit: 2, faults: ['StatusMonitor'] },
  // CoreSupervisor restarts the shape subsystem: 5 / 60 s.
  { supervisor: 'CoreSupervisor', limit: 4, faults: ['ShapeLogCollector', 'ShapeDbWriter', 'ConsumerSupervisor'] },
  // ShapeSubsystemSupervisor: 10 / 60 s.
  { supervisor: 'ShapeSubsystemSupervisor', limit: 8, faults: ['ShapeCache', 'PublicationManager'] },
].map((b) => ({ ...b, at: [] }));
const WINDOW_MS = 62_000;

function budgetFree(picks) {
  const now = Date.now();
  return BUDGETS.every((b) => {
    const need = picks.filter((k) => b.faults.includes(k)).length;
    return need === 0 || b.at.filter((t) => now - t < WINDOW_MS).length + need <= b.limit;
  });
}

function spend(picks) {
  const now = Date.now();
  for (const b of BUDGETS) for (const k of picks) if (b.faults.includes(k)) b.at.push(now);
}

process.stdout.write(`chaos: seed ${seed} (replay with CHAOS_SEED=${seed}), ${duration} ms of random faults among ${keys.join(', ')}\n`);

chaosTest(
  `random faults for ${duration} ms (seed ${seed}): every client converges after each`,
  { big: true, seed, timeout: duration + 600_000 },
  async (env) => {
    const rng = env.faultRng;
    const end = Date.now() + duration;
    for (let i = 1; Date.now() < end; i++) {
      const warmup = rng.int(5, 60);
      // One fault in five is a burst: two or three back to back, none waiting for volt to
      // recover from the one before.
      const picks =
        rng.next() < 0.2
          ? Array.from({ length: rng.int(2, 3) }, () => rng.pick(burstKeys))
          : [rng.pick(keys)];
      const names = picks.map((k) => FAULTS[k].name).join(' + ');
      if (!budgetFree(picks)) {
        process.stdout.write(`chaos: ${i}. ${names}: waiting for the supervisors' restart window\n`);
        env.writer.start();
        await waitFor(() => budgetFree(picks), { timeout: WINDOW_MS + 5_000, interval: 100, label: 'a restart budget' });
      }
      spend(picks);
      process.stdout.write(`chaos: ${i}. ${names} after ${warmup} transactions (seed ${seed})\n`);
      const row = await env.runFaults(picks.map((k) => FAULTS[k]), { rng, warmup });
      row.fault = `${i}. ${row.fault}`;
      RESULTS.push(row);
      assertClean(row);
    }
  },
);

after(() => printResults(`chaos: random faults, seed ${seed}`));
