// Random faults, one after another, for CHAOS_DURATION_MS (default 2 minutes) in one volt
// under load; each is checked like a single fault. The choices come from CHAOS_SEED
// (random unless given, always printed): `CHAOS_SEED=<seed> just chaos` replays them.

import { after } from 'node:test';

import { FAULTS, RESULTS, assertClean, canRestartPostgres, chaosSeed, chaosTest, printResults } from './support/chaos.js';

const seed = chaosSeed();
const duration = Number(process.env.CHAOS_DURATION_MS ?? 120_000);
const keys = Object.keys(FAULTS).filter((k) => !FAULTS[k].needsPgCtl || canRestartPostgres());

process.stdout.write(`chaos: seed ${seed} (replay with CHAOS_SEED=${seed}), ${duration} ms of random faults among ${keys.join(', ')}\n`);

chaosTest(
  `random faults for ${duration} ms (seed ${seed}): every client converges after each`,
  { big: true, seed, timeout: duration + 600_000 },
  async (env) => {
    const rng = env.faultRng;
    const end = Date.now() + duration;
    for (let i = 1; Date.now() < end; i++) {
      const key = rng.pick(keys);
      const warmup = rng.int(5, 60);
      process.stdout.write(`chaos: ${i}. ${FAULTS[key].name} after ${warmup} transactions (seed ${seed})\n`);
      const row = await env.runFault(FAULTS[key], { rng, warmup });
      row.fault = `${i}. ${row.fault}`;
      RESULTS.push(row);
      assertClean(row);
    }
  },
);

after(() => printResults(`chaos: random faults, seed ${seed}`));
